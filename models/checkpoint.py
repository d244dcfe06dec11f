"""The self-describing model file: architecture + kwargs, data, classes, weights, config, noise spec.

The noise spec of a model trained on a profile holds its mapping ("mapping", and "bits" when bit-sliced),
so the tools that use the model map its weights the way training did (`model_mapping`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from firmware_protocol.fileformat import FileFormat, atomic_write
from models.architectures import build_model
from models.config import TrainConfig

if TYPE_CHECKING:
    from models.noise.factory import MappingChoice

MODEL_FILE = FileFormat("rram-hil/model", "1", "an rram-hil model file", version_key="version")
FORMAT = MODEL_FILE.name
VERSION = MODEL_FILE.major


class ModelFileError(ValueError):
    """A model file is unreadable, not a model file, or of a newer version than this software reads."""


def model_record(cfg: TrainConfig, ds: Any, model: nn.Module) -> dict[str, Any]:
    """The evaluation-relevant part of a checkpoint (no optimizer state)."""
    return {
        **MODEL_FILE.stamp(),  # "format", "version"
        "arch": {
            "name": cfg.model,
            "kwargs": dict(cfg.model_kwargs),
            "in_channels": ds.in_channels,
            "image_size": ds.image_size,
            "num_classes": ds.num_classes,
        },
        "data": {"name": cfg.data, "root": cfg.data_root, "num_classes": ds.num_classes},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(),
        "noise": cfg.noise,
        "method": {"name": cfg.method, "options": dict(cfg.method_options)},
    }


def model_mapping(ckpt: dict[str, Any]) -> MappingChoice | None:
    """How the model's weights sit on a profile's devices, as trained (its noise spec records it); None if not trained on a profile.

    Files written before the mapping was chosen per profile were trained bit-sliced with 8-bit weights
    unless their spec says "analog", and read as such.
    """
    from models.noise.factory import mapping_of_spec

    return mapping_of_spec(ckpt.get("noise"))


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, force=True) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a model file written by ``save_checkpoint`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a bad file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelFileError(f"{path}: not a readable model file ({type(exc).__name__}: {first})") from None
    MODEL_FILE.check(ckpt if isinstance(ckpt, dict) else {}, str(path), ModelFileError)
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved network (eval mode) from its file alone; returns (model, checkpoint dict)."""
    ckpt = load_checkpoint(path)
    a = ckpt["arch"]
    model = build_model(
        a["name"], in_channels=a["in_channels"], num_classes=a["num_classes"], image_size=a["image_size"], **a["kwargs"]
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
