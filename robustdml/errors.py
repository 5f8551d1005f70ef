"""Errors caused by the user's input.

The command-line tool prints any :class:`RobustDMLError` as one line and exits non-zero; anything
else is a bug and keeps its traceback.
"""


class RobustDMLError(Exception):
    """Base class: a problem with the user's data, configuration, arguments or files."""


class DatasetError(RobustDMLError):
    """A dataset is missing, incomplete or unreadable."""


class ConfigError(RobustDMLError):
    """A configuration value or command-line argument is invalid."""


class ModelFileError(RobustDMLError):
    """A saved model or checkpoint is missing, corrupt, or not one robustdml wrote."""


class TrainingDiverged(RobustDMLError):
    """The loss became NaN or infinite."""


class RobustDMLWarning(UserWarning):
    """Something about a model or its data that makes figures doubtful, found before a long run
    (embeddings not unit norm, a model random in eval mode, no gradient reaching the input)."""
