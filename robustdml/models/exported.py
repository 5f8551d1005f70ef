"""Any embedding model as a file robustdml can evaluate: a ``torch.export`` program with a batch
dimension of any size, written beside the ``model.json`` every saved model has.

An exported program is a graph of PyTorch operators and its tensors; reading one back runs no Python
code of its author. :func:`check_program_file` refuses, before anything is deserialised, an archive
holding pickled payloads (the only way such a file could carry code).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelFileError
from .modes import eval_mode

PROGRAM = "model.pt2"


class ExportedModel(nn.Module):
    """An exported embedding program as a module: ``forward(images) -> embeddings``.

    The program was captured in eval mode (BatchNorm with its running statistics, no dropout) and
    has no train mode of its own; :meth:`train` sets the flag and changes nothing else.
    """

    def __init__(self, program: nn.Module, input_shape: tuple[int, ...]):
        super().__init__()
        self.program = program
        self.input_shape = tuple(input_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.program(images)

    def train(self, mode: bool = True) -> "ExportedModel":
        self.training = mode  # the graph itself is fixed in eval mode (and refuses .train/.eval)
        return self


def export_program(model: nn.Module, example_input: torch.Tensor):
    """(``model`` exported in eval mode for batches of any size, its embedding size), the program
    checked against the module on the example (the same embeddings to float tolerance), or a
    one-line error saying what went wrong."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save_model needs a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise ConfigError("example_input must be a tensor batch (B, C, H, W) of the model's input, e.g. "
                          "torch.rand(2, 3, 224, 224)")
    example = example_input.detach()
    if len(example) < 2:  # a batch of one would fix the batch size: export needs to see it vary
        example = example.expand(2, *example.shape[1:]).clone()
    example = example.to(next(iter(model.parameters()), example).device)
    with eval_mode(model):
        try:
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        except Exception as e:  # export's errors are long; the first line says what failed
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot export {type(model).__name__} for batches of any size: {first}") from None
        with torch.no_grad():
            expected, got = model(example), program.module()(example)
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise ConfigError(f"the exported {type(model).__name__} does not reproduce the module's output on the "
                          f"example (max difference {(expected - got).abs().max().item():.3g})")
    return program, int(expected.shape[-1])


def save_program(program, path: Path) -> None:
    buffer = io.BytesIO()  # export names its archive by the file's suffix: written to memory, then to ``path``
    torch.export.save(program, buffer)
    Path(path).write_bytes(buffer.getvalue())


# What an exported program's archive holds (under its one top-level folder); anything else is refused.
_ARCHIVE_FILES = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
_ARCHIVE_FOLDERS = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/")


def check_program_file(path: Path) -> None:
    """Refuse a program archive that carries pickled objects: weights and constants must be raw
    tensors, and the sample inputs must read as plain tensors."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path} is not an exported program archive: {e}") from None
    with archive:
        names = archive.namelist()
        inner = [name.partition("/")[2] for name in names]
        odd = [n for n, i in zip(names, inner) if i not in _ARCHIVE_FILES and not i.startswith(_ARCHIVE_FOLDERS)]
        if odd or not any(i.startswith("models/") and i.endswith(".json") for i in inner):
            raise ModelFileError(f"{path} is not an exported program archive (unexpected {odd[0] if odd else 'layout'}); "
                                 "save models with robustdml.save_model")
        for name in names:
            if name.endswith(("_weights_config.json", "_constants_config.json")):
                try:
                    config = json.loads(archive.read(name)).get("config", {})
                except (ValueError, AttributeError):
                    raise ModelFileError(f"{path}: {name} is not valid JSON") from None
                if any(entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_"))
                       for entry in config.values()):
                    raise ModelFileError(f"{path} holds pickled objects ({name}); robustdml loads only programs "
                                         "whose tensors are raw data")
            elif "/sample_inputs/" in name:
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise ModelFileError(f"{path}: its sample inputs are not plain tensors; refusing to load it") from None


def load_program(path: Path, input_shape, device) -> ExportedModel:
    check_program_file(path)
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path} is not a readable exported program: {first}") from None
    return ExportedModel(program.module(), tuple(input_shape)).to(device)
