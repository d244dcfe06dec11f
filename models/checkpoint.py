"""The self-describing model file: architecture + kwargs, data, classes, weights, config, noise spec."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.architectures import build_model
from models.config import TrainConfig

FORMAT = "rram-hil/model"
VERSION = 1


def model_record(cfg: TrainConfig, ds: Any, model: nn.Module) -> dict[str, Any]:
    """The evaluation-relevant part of a checkpoint (no optimizer state)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": {"name": cfg.model, "kwargs": dict(cfg.model_kwargs), "in_channels": ds.in_channels,
                 "image_size": ds.image_size, "num_classes": ds.num_classes},
        "data": {"name": cfg.data, "root": cfg.data_root, "num_classes": ds.num_classes},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(),
        "noise": cfg.noise,
        "method": {"name": cfg.method, "options": dict(cfg.method_options)},
    }


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a model file written by ``save_checkpoint`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{path}: not a readable model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an rram-hil model file")
    if ckpt.get("version", 0) > VERSION:
        raise ValueError(f"{path}: model file version {ckpt['version']} is newer than this software ({VERSION})")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved network (eval mode) from its file alone; returns (model, checkpoint dict)."""
    ckpt = load_checkpoint(path)
    a = ckpt["arch"]
    model = build_model(a["name"], in_channels=a["in_channels"], num_classes=a["num_classes"],
                        image_size=a["image_size"], **a["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
