"""Model files are data only: a pickle that would run code is refused unread, and a file cannot pick code to import."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from models.architectures import ARCHITECTURES, build_model
from models.checkpoint import ModelFileError, load_checkpoint, load_model, model_record, save_checkpoint
from models.config import TrainConfig
from models.training import train
from tests.helpers.cli import assert_one_line_error, rram

torch.set_num_threads(1)


class Digits:
    in_channels, image_size, num_classes = 1, 8, 10  # the digits set's


class Payload:
    """Unpickling this calls os.mkdir(marker): the code a hostile model file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def record(model_name: str = "mlp", **kwargs) -> dict:
    cfg = TrainConfig(model=model_name, model_kwargs=kwargs or {"hidden": [5]}, data="digits")
    net = build_model("mlp", in_channels=1, num_classes=10, image_size=8, hidden=[5])
    return model_record(cfg, Digits(), net)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rec = record()
    rec["config"]["hook"] = Payload(marker)  # anywhere in the file
    torch.save(rec, tmp_path / "evil.pt")
    for load in (load_checkpoint, load_model):
        with pytest.raises(ModelFileError) as exc:
            load(tmp_path / "evil.pt")
        msg = one_line(exc)
        assert "posix.mkdir" in msg or "os.mkdir" in msg, msg
        assert "could run code" in msg and "rram train" in msg
    assert not marker.exists()


def test_the_cli_refuses_a_hostile_file_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    torch.save({**record(), "noise": Payload(marker)}, tmp_path / "evil.pt")
    r = rram(capsys, monkeypatch, "evaluate", str(tmp_path / "evil.pt"), "--lognormal", "0.1", "--mc", "2")
    assert_one_line_error(r, "could run code")
    assert not marker.exists()


def test_numpy_objects_are_refused_too(tmp_path: Path) -> None:
    """Not code, but not plain data either: weights_only refuses them, so the writers must not store them."""
    import numpy as np

    torch.save({**record(), "history": [{"loss": np.float64(0.5)}]}, tmp_path / "np.pt")
    with pytest.raises(ModelFileError, match="could run code") as exc:
        load_checkpoint(tmp_path / "np.pt")
    one_line(exc)


def test_a_garbage_file_is_unreadable_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ModelFileError, match="not a readable model file") as exc:
        load_checkpoint(tmp_path / "bad.pt")
    one_line(exc)


def test_a_trained_checkpoint_with_its_training_state_is_plain_data(tmp_path: Path) -> None:
    """What train() writes every epoch (weights, optimizer, scheduler, RNG, method state) loads with weights_only."""
    ck = tmp_path / "run.pt"
    cfg = TrainConfig(
        model="mlp",
        model_kwargs={"hidden": [8]},
        data="digits",
        method="noise",
        noise={"family": "lognormal", "sigma": 0.1},
        epochs=1,
        batch_size=256,
        checkpoint=str(ck),
        progress=False,
    )
    train(cfg, log=lambda s: None)
    raw = torch.load(ck, weights_only=True, map_location="cpu")
    assert set(raw["train_state"]) >= {"optimizer", "rng", "method", "model"}
    model, _ = load_model(ck)
    assert isinstance(model, nn.Module)


# ------------------------------------------------------------------------------------------- architectures


CALLS: list[int] = []


def tiny_factory(num_classes: int = 10, width: int = 5) -> nn.Module:
    """A user factory ("tests.models.test_checkpoint_safety:tiny_factory"); records that it ran."""
    CALLS.append(width)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))


FACTORY = f"{__name__}:tiny_factory"


def factory_file(tmp_path: Path) -> Path:
    net = tiny_factory(width=6)
    cfg = TrainConfig(model=FACTORY, model_kwargs={"width": 6}, data="digits")
    path = tmp_path / "user.pt"
    save_checkpoint(model_record(cfg, Digits(), net), path)
    return path


def test_registered_names_are_the_only_ones_a_file_may_name_alone(tmp_path: Path) -> None:
    assert ARCHITECTURES.names() == ["cnn", "mlp", "resnet18", "vgg8"]
    rec = record()
    rec["arch"]["name"] = "transformer"
    save_checkpoint(rec, tmp_path / "u.pt")
    with pytest.raises(ModelFileError, match="unknown architecture 'transformer'") as exc:
        load_model(tmp_path / "u.pt")
    one_line(exc)


def test_a_file_naming_a_factory_is_refused_unless_the_same_factory_is_given(tmp_path: Path) -> None:
    path = factory_file(tmp_path)
    CALLS.clear()
    with pytest.raises(ModelFileError, match="only when given explicitly") as exc:
        load_model(path)
    assert f"--model {FACTORY}" in one_line(exc)
    with pytest.raises(ModelFileError, match="not the given factory"):
        load_model(path, factory="os:getcwd")
    assert CALLS == []  # refused before anything was imported or called
    model, ckpt = load_model(path, factory=FACTORY)
    assert CALLS == [6, 6] and ckpt["arch"]["name"] == FACTORY  # built on the meta device (shapes), then for real
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_factory_from_the_file_is_not_even_imported(tmp_path: Path) -> None:
    rec = record()
    rec["arch"]["name"] = "tests_nonexistent_evil_module:boom"
    save_checkpoint(rec, tmp_path / "f.pt")
    with pytest.raises(ModelFileError, match="only when given explicitly"):
        load_model(tmp_path / "f.pt")
    assert "tests_nonexistent_evil_module" not in sys.modules


def test_the_cli_passes_an_explicit_factory(tmp_path: Path, capsys, monkeypatch) -> None:
    path = factory_file(tmp_path)
    args = ["evaluate", str(path), "--lognormal", "0.05", "--mc", "2", "--json"]
    assert_one_line_error(rram(capsys, monkeypatch, *args), "--model " + FACTORY)
    r = rram(capsys, monkeypatch, *args, "--model", FACTORY)
    assert r.code == 0, r.text
    assert json.loads(r.out)["n_draws"] == 2


def test_a_teacher_may_use_the_students_own_factory_and_no_other(tmp_path: Path) -> None:
    from models.checkpoint import load_teacher

    path = factory_file(tmp_path)
    teacher, _ = load_teacher(path, "cpu", FACTORY)  # MTRD / IBM-HWA distillation from a teacher of the same kind
    assert sum(p.numel() for p in teacher.parameters()) > 0
    with pytest.raises(ModelFileError, match="user factory"):
        load_teacher(path, "cpu", "mlp")  # a registered student does not vouch for the file's factory
