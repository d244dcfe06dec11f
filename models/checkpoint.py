"""The self-describing model file: architecture + kwargs, data, classes, weights, config, noise spec.

The noise spec of a model trained on a profile holds its mapping ("mapping", and "bits" when bit-sliced),
so the tools that use the model map its weights the way training did (`model_mapping`).

A model file holds data only (tensors, numbers, strings, lists, dicts) and is read with
``torch.load(weights_only=True)``: a file whose pickle names any other object (which could run code when
read) is refused unread. Its architecture must be a registered name (`models.architectures.ARCHITECTURES`);
a "pkg.mod:factory" architecture is built only when the caller names the same factory (`factory=`,
``--model`` on the command line), so a file alone never chooses code to import.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from firmware_protocol.fileformat import FileFormat, atomic_write
from models.architectures import ARCHITECTURES, build_model, is_user_factory
from models.config import TrainConfig

if TYPE_CHECKING:
    from models.noise.factory import MappingChoice

MODEL_FILE = FileFormat("rram-hil/model", "1", "an rram-hil model file", version_key="version")
FORMAT = MODEL_FILE.name
VERSION = MODEL_FILE.major


class ModelFileError(ValueError):
    """A model file is unreadable, not a model file, of a newer version, holds more than data, or names unknown code."""


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _torch_reason(exc: Exception) -> str:
    """One informative line of a torch.load error (its messages run to many lines of advice)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:") and ln != "WeightsUnpickler error:":
            return ln.removeprefix("WeightsUnpickler error:").strip()
    useful = [
        ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation", "Please"))
    ]
    return (useful or lines or [""])[-1]


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
    """Read a model file written by ``save_checkpoint`` (data only: ``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _GLOBAL.search(str(exc))
        if unsafe:
            raise ModelFileError(
                f"{path}: holds a {unsafe.group(1)} object, not only tensors, numbers and strings; it is not read "
                "because unpickling it could run code (if you trust its source, retrain it with `rram train`)"
            ) from None
        raise ModelFileError(f"{path}: not a readable model file (UnpicklingError: {_torch_reason(exc)})") from None
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelFileError(
            f"{path}: not a readable model file ({type(exc).__name__}: {_torch_reason(exc)})"
        ) from None
    MODEL_FILE.check(ckpt if isinstance(ckpt, dict) else {}, str(path), ModelFileError)
    return ckpt


def check_architecture(name: str, path: str | Path, factory: str | None = None) -> None:
    """Refuse (ModelFileError) an architecture the file names unless it is registered or is the caller's ``factory``."""
    if factory is not None and factory != name:
        raise ModelFileError(
            f"{path}: the file's architecture is {name!r}, not the given factory {factory!r} (give the file's own, or none)"
        )
    if factory is not None or name in ARCHITECTURES:
        return
    if is_user_factory(name):
        raise ModelFileError(
            f"{path}: its architecture is the user factory {name!r}, which is imported and run only when given "
            f"explicitly: pass --model {name} (or factory={name!r} to load_model) if you trust it"
        )
    raise ModelFileError(
        f"{path}: unknown architecture {name!r} (known: {', '.join(ARCHITECTURES.names())}, or a pkg.mod:factory "
        "given explicitly)"
    )


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, factory: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved network (eval mode) from its file; returns (model, checkpoint dict).

    ``factory`` ("pkg.mod:factory") is the user's own architecture, needed (and only accepted) when the file
    names that same factory; a registered architecture needs nothing.
    """
    ckpt = load_checkpoint(path)
    a = ckpt.get("arch")
    if not isinstance(a, dict) or not isinstance(a.get("name"), str):
        raise ModelFileError(f"{path}: the model file records no architecture name (write it again with `rram train`)")
    check_architecture(a["name"], path, factory)
    model = build_model(
        a["name"], in_channels=a["in_channels"], num_classes=a["num_classes"], image_size=a["image_size"], **a["kwargs"]
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
