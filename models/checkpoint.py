"""The self-describing model file: architecture + kwargs, data, classes, weights, config, noise spec.

The noise spec of a model trained on a profile holds its mapping ("mapping", and "bits" when bit-sliced),
so the tools that use the model map its weights the way training did (`model_mapping`).

A model file holds data only (tensors, numbers, strings, lists, dicts) and is read with
``torch.load(weights_only=True)``: a file whose pickle names any other object (which could run code when
read) is refused unread. Its architecture must be a registered name (`models.architectures.ARCHITECTURES`);
a "pkg.mod:factory" architecture is built only when the caller names the same factory (`factory=`,
``--model`` on the command line), so a file alone never chooses code to import.

Before a network is built, `validate_checkpoint` checks the record's structure and types, and every tensor
(dense, on the CPU, finite); the architecture is then built on torch's ``meta`` device (no memory) and its
state dict compared, name by name, in shape and dtype, with the file's, so the real network allocated
afterwards is exactly as large as the tensors the file holds. A file written every epoch by a run that
stopped early loads with an `UnfinishedTraining` warning (epochs done of planned, from its training state).
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from firmware_protocol.fileformat import FileFormat, atomic_write
from models.architectures import ARCHITECTURES, build_model, check_model_kwargs, is_user_factory
from models.config import TrainConfig

if TYPE_CHECKING:
    from models.noise.factory import MappingChoice

MODEL_FILE = FileFormat("rram-hil/model", "1", "an rram-hil model file", version_key="version")
FORMAT = MODEL_FILE.name
VERSION = MODEL_FILE.major


class ModelFileError(ValueError):
    """A model file is unreadable, not a model file, of a newer version, holds more than data, or names unknown code."""


class UnfinishedTraining(UserWarning):
    """A model file from a training run that stopped before its planned epochs (`rram train --resume` continues it)."""


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
    from models.noise.factory import pin_conventions

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
        "config": {**cfg.to_dict(), "noise": pin_conventions(cfg.noise)},
        "noise": pin_conventions(cfg.noise),  # stored with its sigma_d convention, read the same way later
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
    validate_checkpoint(ckpt, path)
    from models.noise.factory import pin_conventions

    # A spec without a sigma_d convention was stored before the full-range one: it meant level steps (eq. 15).
    ckpt["noise"] = pin_conventions(ckpt["noise"], legacy=True)
    if isinstance(ckpt["config"].get("noise"), dict):
        ckpt["config"]["noise"] = pin_conventions(ckpt["config"]["noise"], legacy=True)
    return ckpt


def validate_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Check a model record's structure, types and tensors (format 1); ModelFileError naming the first problem.

    Required: ``arch`` {name, kwargs, in_channels, image_size, num_classes >= 1}, ``state_dict`` {name: tensor},
    ``data`` {name, root}, ``config``, ``method`` (dicts), ``noise`` (dict or None); optional ``history`` (list)
    and ``train_state`` (dict with whole ``epoch`` >= 0). Tensors must be dense CPU tensors whose elements all
    sit in their own storage (no stride-0 views claiming more than the file holds); floating ones finite.
    """

    def bad(why: str) -> ModelFileError:
        return ModelFileError(f"{path}: {why} (write it again with `rram train`)")

    arch = ckpt.get("arch")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise ModelFileError(f"{path}: the model file records no architecture name (write it again with `rram train`)")
    if not isinstance(arch.get("kwargs"), dict) or not all(isinstance(k, str) for k in arch["kwargs"]):
        raise bad("arch kwargs is not a dict of named arguments")
    for key in ("in_channels", "image_size", "num_classes"):
        v = arch.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(f"arch {key} must be a whole number >= 1, got {v!r}")
    data = ckpt.get("data")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("name"), str)
        or not isinstance(data.get("root"), (str, type(None)))
    ):
        raise bad("its data entry needs a data set name and root")
    for key in ("config", "method"):
        if not isinstance(ckpt.get(key), dict):
            raise bad(f"its {key} entry is not a dict")
    if not isinstance(ckpt.get("noise"), (dict, type(None))):
        raise bad("its noise entry is not a dict")
    if not isinstance(ckpt.get("history", []), list):
        raise bad("its history is not a list")
    state = ckpt.get("train_state")
    if state is not None:
        epoch = state.get("epoch") if isinstance(state, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise bad("its train_state has no whole epoch count")
        if not isinstance(state.get("model", {}), dict):
            raise bad("its train_state model is not a dict of tensors")
        for name, t in state.get("model", {}).items():
            _check_tensor(f"train_state.model.{name}", t, bad)
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict) or not sd:
        raise bad("it holds no state_dict of weights")
    for name, t in sd.items():
        _check_tensor(name, t, bad)


def _check_tensor(name: object, t: object, bad: Any) -> None:
    if not isinstance(name, str) or not isinstance(t, torch.Tensor):
        raise bad(f"state_dict entry {name!r} is not a named tensor")
    if t.layout != torch.strided or t.device.type != "cpu":
        raise bad(f"tensor {name} is a {t.layout} tensor on {t.device}, not a dense CPU tensor")
    if t.numel() * t.element_size() > t.untyped_storage().nbytes():
        raise bad(f"tensor {name} claims {t.numel()} elements, more than its stored data holds")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise bad(f"tensor {name} holds NaN or infinite values (did training diverge?)")


def epochs_trained(ckpt: dict[str, Any]) -> tuple[int, int] | None:
    """(epochs done, epochs planned) of the run that wrote the file; None when it records no training state."""
    state, config = ckpt.get("train_state"), ckpt.get("config", {})
    planned = config.get("epochs") if isinstance(config, dict) else None
    if not isinstance(state, dict) or isinstance(planned, bool) or not isinstance(planned, int):
        return None
    return int(state["epoch"]), planned


def unfinished_message(path: str | Path, ckpt: dict[str, Any]) -> str | None:
    """One line saying the file's training stopped early, and how to continue it; None for a finished run."""
    done = epochs_trained(ckpt)
    if done is None or done[0] >= done[1]:
        return None
    return (
        f"{path} was trained for {done[0]} of its {done[1]} planned epochs (the run stopped early); "
        f"finish it with `rram train --resume {path} -o {path}` and the same options"
    )


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
    dims = {"in_channels": a["in_channels"], "num_classes": a["num_classes"], "image_size": a["image_size"]}
    if a["name"] in ARCHITECTURES:
        try:
            check_model_kwargs(a["name"], a["kwargs"])
        except ValueError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
        n_tensors = len(ckpt["state_dict"])
        for key, value in a["kwargs"].items():  # each listed layer holds a tensor: bounds the (meta) build's time
            if isinstance(value, (list, tuple)) and len(value) > n_tensors:
                raise ModelFileError(
                    f"{path}: arch {key} lists {len(value)} layers, more than the {n_tensors} tensors the file holds"
                )
    skeleton = _meta_model(a["name"], dims, a["kwargs"], path)
    if skeleton is not None:
        check_state_dict(skeleton, ckpt["state_dict"], f"{path}: {a['name']} with {_args_text(a['kwargs'])}")
    model = build_model(a["name"], **dims, **a["kwargs"])  # as large as the file's tensors: checked above
    if skeleton is None:  # a user factory that cannot be built on the meta device
        check_state_dict(model, ckpt["state_dict"], f"{path}: {a['name']}")
    model.load_state_dict(ckpt["state_dict"])
    message = unfinished_message(path, ckpt)
    if message is not None:
        warnings.warn(message, UnfinishedTraining, stacklevel=2)
    return model.to(device).eval(), ckpt


def load_teacher(path: str | Path, device: str | torch.device, student_model: str) -> tuple[nn.Module, dict[str, Any]]:
    """`load_model` for a teacher file: the student's own architecture (``student_model``, a registered name or the
    user factory given with --model) is trusted for it too, any other user factory is refused as usual."""
    a = load_checkpoint(path).get("arch")
    name = a.get("name") if isinstance(a, dict) else None
    trusted = student_model if is_user_factory(student_model) and name == student_model else None
    return load_model(path, device, factory=trusted)


def _meta_model(name: str, dims: dict[str, int], kwargs: dict[str, Any], path: str | Path) -> nn.Module | None:
    """The architecture built on the meta device (shapes only, no memory); None for a user factory it fails on."""
    try:
        with torch.device("meta"):
            return build_model(name, **dims, **kwargs)
    except Exception as exc:  # a constructor refusing the file's arguments raises many types
        if is_user_factory(name):
            return None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{path}: {name} cannot be built with {_args_text({**dims, **kwargs})}: {first}") from None


def _args_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its default arguments"


def check_state_dict(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Refuse (ModelFileError) weights that do not fit ``model``: a missing or extra name, another shape or dtype."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"holds {extra[0]}, which the network does not have"
        raise ModelFileError(f"{source}: the file's weights do not fit it, the file {what}")
    for k, ref in expected.items():
        got = state[k]
        if tuple(got.shape) != tuple(ref.shape) or got.dtype != ref.dtype:
            raise ModelFileError(f"{source}: the file's {k} is {_describe(got)}, but the network's is {_describe(ref)}")


def _describe(t: torch.Tensor) -> str:
    shape = "x".join(str(n) for n in t.shape) or "scalar"
    return f"{shape} {str(t.dtype).removeprefix('torch.')} ({math.prod(t.shape)} values)"
