"""Damaged plan files (issue 15 item 9) are refused at load, in one line, before the board is touched.

Before, a plan with a tile outside its layer or NaN targets was accepted and failed only inside the run,
after the gate calibration had spent its pulses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from hil.deploy.placement import build_plan
from hil.deploy.plan import PlanError, load_plan, save_plan, validate_plan
from hil.deploy.procedure import DeployRun
from hil.hardware.board import Board
from tests.helpers.cli import assert_one_line_error, rram

G_MIN, G_MAX = 4e-6, 36e-6
BOARD = "sim://?seed=3&rows=4&cols=4"


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    """A 6 -> 4 linear layer on a 4x4 array: targets (6, 8), cut into 2 x 2 tiles."""
    torch.manual_seed(0)
    plan = build_plan(nn.Linear(6, 4), G_MIN, G_MAX, {}, rows=4, cols=4)
    assert plan.layers[0].targets.shape == (6, 8) and len(plan.tiles) == 4
    return save_plan(plan, tmp_path / "plan.h5")


def _targets(f: h5py.File, change: Callable[[np.ndarray], None]) -> None:
    t = f["layers/000/targets"][...]
    change(t)
    f["layers/000/targets"][...] = t


def _replace(f: h5py.File, name: str, **kw: object) -> None:
    del f[name]
    f.create_dataset(name, **kw)


def _tile(i: int, **fields: int) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        t = f["tiles"][i]
        for k, v in fields.items():
            t[k] = v
        f["tiles"][i] = t

    return edit


DAMAGE = [
    (_tile(3, r0=5), "tile 3 (layer 0, rows 5+2, cols 4+4) lies outside layer weight's 6x8 devices"),
    (_tile(1, c0=6), "lies outside layer"),
    (_tile(0, r0=-1), "lies outside layer"),
    (_tile(2, layer=7), "names a layer the plan does not have"),
    (_tile(1, c0=2), "overlaps an earlier tile"),
    (lambda f: _replace(f, "tiles", data=f["tiles"][:3]), "8 devices of layer weight are in no tile"),
    (lambda f: _targets(f, lambda t: t.__setitem__((1, 2), np.nan)), "1 NaN or infinite targets"),
    (lambda f: _targets(f, lambda t: t.__setitem__((0, 0), np.inf)), "1 NaN or infinite targets"),
    (lambda f: _targets(f, lambda t: t.__setitem__((0, 0), 1e-3)), "outside [4e-06, 3.6e-05] S"),
    (lambda f: f["layers/000/verify"].__setitem__((0, 0), 2), "verify marks other than 0 and 1"),
    (lambda f: f["layers/000"].attrs.__setitem__("scale", np.nan), "weight scale nan"),
    (lambda f: f["layers/000"].attrs.__setitem__("shape", "[4, 6.5]"), "not a list of whole numbers"),
    (lambda f: f.attrs.__setitem__("g_max", np.inf), "needs 0 <= g_min < g_max"),
    (lambda f: f.attrs.__setitem__("rows", 0), "its array is 0x4"),
    (lambda f: f.attrs.__setitem__("cols", 2**40), "outside 1..65535 per side"),
    (lambda f: _replace(f, "layers/000/targets", data=np.zeros((6, 8), dtype="S4")), "targets of dtype |S4"),
    (lambda f: _replace(f, "tiles", data=np.zeros(4)), "not a list of (layer, r0, c0, nr, nc) records"),
    (lambda f: _replace(f, "layers/000/targets", shape=(2**40, 8), dtype="f4"), "its datasets claim"),
]


@pytest.mark.parametrize("edit, message", DAMAGE)
def test_a_damaged_plan_is_refused_in_one_line(good: Path, edit: Callable[[h5py.File], None], message: str) -> None:
    with h5py.File(good, "r+") as f:
        edit(f)
    with pytest.raises(PlanError) as exc:
        load_plan(good)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{good} is corrupt") and message in msg, msg


def test_the_programming_run_refuses_it_before_any_pulse(good: Path, tmp_path: Path) -> None:
    """The check runs when the run is set up (Procedure.validate), before gate calibration or any write."""
    with h5py.File(good, "r+") as f:
        _tile(3, r0=5)(f)
    out = tmp_path / "deploy.h5"
    with Board.open(BOARD) as board:
        with pytest.raises(PlanError, match="lies outside layer"):
            DeployRun(DeployRun.Params(plan=str(good)), board)
    assert not out.exists()


def test_rram_program_refuses_it_before_opening_the_board(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with h5py.File(good, "r+") as f:
        _targets(f, lambda t: t.__setitem__((1, 2), np.nan))
    opened: list[str] = []
    monkeypatch.setattr(Board, "open", classmethod(lambda cls, url, **kw: opened.append(url)))
    out = tmp_path / "d.h5"
    out.write_bytes(b"")  # --resume of an existing deployment with that plan
    r = rram(capsys, monkeypatch, "program", "m.pt", "--resume", "--plan", str(good), "-o", str(out), "--port", BOARD)
    assert_one_line_error(r, f"{good} is corrupt: layer weight has 1 NaN or infinite targets")
    assert opened == []


def test_an_in_memory_plan_is_checked_the_same_way() -> None:
    plan = build_plan(nn.Linear(6, 4), G_MIN, G_MAX, {}, rows=4, cols=4)
    validate_plan(plan, "plan")
    plan.layers[0].targets[0, 0] = np.nan
    with pytest.raises(PlanError, match="plan is corrupt: layer weight has 1 NaN"):
        validate_plan(plan, "plan")
