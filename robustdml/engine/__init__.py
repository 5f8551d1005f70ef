"""The training engine: configuration, loop, checkpoints."""

from .config import TrainConfig, config_from_dict
from .trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "config_from_dict", "Trainer", "TrainingDiverged", "TrainResult", "train"]
