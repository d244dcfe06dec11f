"""Damaged model files (issue 15 items 9 and 12) are refused in one line before a network is allocated.

The architecture is built on the meta device and compared with the file's tensors, so a file claiming
`hidden=[2**40]` or `num_classes=-3` never reaches a real allocation; a file from a run stopped early
loads with a one-line warning.
"""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from models.architectures import build_model, check_model_kwargs
from models.checkpoint import (
    ModelFileError,
    UnfinishedTraining,
    epochs_trained,
    load_checkpoint,
    load_model,
    model_record,
    save_checkpoint,
)
from models.config import TrainConfig
from models.training import train

torch.set_num_threads(1)


class Digits:
    in_channels, image_size, num_classes = 1, 8, 10


def record() -> dict[str, Any]:
    cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [5]}, data="digits")
    net = build_model("mlp", in_channels=1, num_classes=10, image_size=8, hidden=[5])
    return model_record(cfg, Digits(), net)


def _set_weight(value: torch.Tensor) -> Any:
    return lambda r: r["state_dict"].__setitem__("net.1.weight", value)


def _nan_weight(r: dict[str, Any]) -> None:
    r["state_dict"]["net.1.weight"][0, 0] = float("nan")


DAMAGE = [
    (
        _set_weight(torch.zeros(7, 64)),
        "mlp with hidden=[5]: the file's net.1.weight is 7x64 float32 (448 values), "
        "but the network's is 5x64 float32 (320 values)",
    ),
    (_set_weight(torch.zeros(5, 64, dtype=torch.float64)), "net.1.weight is 5x64 float64"),
    (lambda r: r["state_dict"].pop("net.3.bias"), "the file lacks net.3.bias"),
    (lambda r: r["state_dict"].__setitem__("net.9.weight", torch.zeros(1)), "the file holds net.9.weight, which"),
    (lambda r: r.pop("arch"), "records no architecture name"),
    (lambda r: r["arch"].pop("name"), "records no architecture name"),
    (lambda r: r["arch"]["kwargs"].__setitem__("hidden", [2**40]), "but the network's is 1099511627776x64 float32"),
    (lambda r: r["arch"]["kwargs"].__setitem__("hidden", 16), "hidden must be a list of layer widths >= 1"),
    (
        lambda r: r["arch"]["kwargs"].__setitem__("hidden", [5] * 20_000),  # 13 s to build even on the meta device
        "arch hidden lists 20000 layers, more than the 4 tensors the file holds",
    ),
    (lambda r: r["arch"]["kwargs"].__setitem__("depth", 3), "model mlp takes hidden; got unknown depth=3"),
    (lambda r: r["arch"].__setitem__("num_classes", -3), "arch num_classes must be a whole number >= 1, got -3"),
    (lambda r: r["arch"].__setitem__("image_size", 2.5), "arch image_size must be a whole number >= 1"),
    (lambda r: r.__setitem__("data", "digits"), "its data entry needs a data set name and root"),
    (lambda r: r.__setitem__("noise", [1]), "its noise entry is not a dict"),
    (lambda r: r.__setitem__("train_state", {"epoch": -1}), "its train_state has no whole epoch count"),
    (_set_weight(torch.zeros(1).expand(5, 64)), "tensor net.1.weight claims 320 elements, more than its stored"),
    (_nan_weight, "tensor net.1.weight holds NaN or infinite values"),
    (lambda r: r["state_dict"].__setitem__("net.1.weight", "weights"), "'net.1.weight' is not a named tensor"),
]


@pytest.mark.parametrize("damage, message", DAMAGE)
def test_a_damaged_model_file_is_refused_in_one_line(tmp_path: Path, damage: Any, message: str) -> None:
    rec = record()
    damage(rec)
    path = tmp_path / "m.pt"
    save_checkpoint(rec, path)
    with pytest.raises(ModelFileError) as exc:
        load_model(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and message in msg, msg


def test_a_huge_claimed_layer_is_never_allocated(tmp_path: Path) -> None:
    """hidden=[2**40] would be 2^46 floats (256 TiB): compared on the meta device, nothing near it is allocated."""
    rec = record()
    rec["arch"]["kwargs"]["hidden"] = [2**40]
    save_checkpoint(rec, tmp_path / "m.pt")
    size = (tmp_path / "m.pt").stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="1099511627776x64"):
            load_model(tmp_path / "m.pt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size + 2**22, peak  # the file's own tensors plus bookkeeping (4 MiB)


def test_resume_checks_the_training_state_shapes(tmp_path: Path) -> None:
    ck = tmp_path / "run.pt"
    cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [8]}, epochs=2, batch_size=512, checkpoint=str(ck))
    train(cfg, log=lambda s: None, stop_after=1)
    raw = torch.load(ck, weights_only=True)
    raw["train_state"]["model"]["net.1.weight"] = torch.zeros(9, 64)
    torch.save(raw, ck)
    with pytest.raises(ModelFileError, match="net.1.weight is 9x64 float32 .* but the network's is 8x64"):
        train(cfg, log=lambda s: None, resume=ck)


def test_a_file_from_a_run_stopped_early_warns_in_one_line(tmp_path: Path) -> None:
    """The file written every epoch records epochs done (train_state.epoch) and planned (config.epochs)."""
    ck = tmp_path / "run.pt"
    cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [8]}, epochs=3, batch_size=512, checkpoint=str(ck))
    train(cfg, log=lambda s: None, stop_after=1)  # as if killed after the first of three epochs
    assert epochs_trained(load_checkpoint(ck)) == (1, 3)
    with pytest.warns(UnfinishedTraining) as caught:
        load_model(ck)
    (w,) = caught
    assert str(w.message) == (
        f"{ck} was trained for 1 of its 3 planned epochs (the run stopped early); "
        f"finish it with `rram train --resume {ck} -o {ck}` and the same options"
    )
    train(cfg, log=lambda s: None, resume=ck)
    assert epochs_trained(load_checkpoint(ck)) == (3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinishedTraining)
        load_model(ck)  # finished: no warning


def test_an_old_file_without_training_state_loads_without_a_warning() -> None:
    compat = Path(__file__).parents[1] / "data" / "compat" / "model_1.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinishedTraining)
        _, ckpt = load_model(compat)
    assert epochs_trained(ckpt) is None


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("mlp", {"hidden": 16}, "model mlp: hidden must be a list of layer widths >= 1, like hidden=[256,128]; got 16"),
        ("mlp", {"hidden": [16, 0]}, "hidden must be a list of layer widths >= 1"),
        ("cnn", {"hidden": [16]}, "model cnn: hidden must be a whole number >= 1, like hidden=128; got [16]"),
        ("cnn", {"channels": [8]}, "channels must be a list of 2 whole numbers >= 1, like channels=[16,32]"),
        ("vgg8", {"width": True}, "width must be a whole number >= 1"),
        ("resnet18", {"hidden": [3]}, "model resnet18 takes width; got unknown hidden=[3]"),
    ],
)
def test_model_arguments_follow_the_architectures_types(name: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_model_kwargs(name, kwargs)
    assert str(exc.value) == message or message in str(exc.value), str(exc.value)
    check_model_kwargs("mlp", {"hidden": [16]})
    check_model_kwargs("cnn", {"hidden": 16, "channels": (4, 8)})


def test_training_refuses_a_network_larger_than_memory() -> None:
    cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [2**40]}, epochs=1, device="cpu")
    with pytest.raises(ValueError, match=r"has 8.25e\+13 weights .* more than the \d+ GiB of memory on cpu"):
        train(cfg, log=lambda s: None)
