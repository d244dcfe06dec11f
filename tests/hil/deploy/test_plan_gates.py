"""The one-shot gates of a deployment come from the gate map its profile's open-loop law was measured with."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from hil.characterize.multilevel import gate_for
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import read_run
from hil.deploy.placement import build_plan
from hil.deploy.plan import save_plan
from hil.deploy.procedure import DeployRun
from hil.hardware.board import Board
from tests.helpers.boards import pulses

G_MIN, G_MAX = 4e-6, 36e-6
GATE_V = [0.8, 1.0, 1.2, 1.4]
G_S = [[3e-6, 4e-6], [9e-6, 11e-6], [20e-6, 22e-6], [33e-6, 35e-6]]  # (gates, cells), increasing


def _plan(tmp_path, gate_map=None, name: str = "plan.h5"):
    import torch

    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    mask = {"weight": torch.zeros(4, 6, dtype=torch.bool)}
    mask["weight"][0, :3] = True  # a few write-verified devices beside the one-shot ones
    meta = {} if gate_map is None else {"gate_map": gate_map}
    return save_plan(build_plan(model, G_MIN, G_MAX, mask, rows=8, cols=8, meta=meta), tmp_path / name)


def _deploy(plan_path, out, **kw):
    with Board.open("sim://?seed=9&rows=8&cols=8&persist=0") as board:
        before = pulses(board.link.engine)  # type: ignore[attr-defined]
        summary = run_procedure(
            DeployRun(DeployRun.Params(plan=str(plan_path), read_delay=0.0, reverify=0, **kw), board),
            out,
            quiet=True,
        ).summary
        return summary, pulses(board.link.engine) - before  # type: ignore[attr-defined]


def test_the_plan_gate_map_replaces_the_calibration_and_costs_no_pulse(tmp_path) -> None:
    plan_path = _plan(tmp_path, {"gate_v": GATE_V, "g_s": G_S})
    summary, sent = _deploy(plan_path, tmp_path / "a.h5")
    run = read_run(tmp_path / "a.h5")
    cal, t = run.data["gate_cal"], run.data["tiles"]
    np.testing.assert_array_equal(cal["gate"], GATE_V)
    np.testing.assert_array_equal(cal["g"], G_S)
    assert summary["gate_source"] == "profile"
    # every SET/RESET the board sent is one the tile records count: no calibration pulses
    assert sent[1] + sent[2] == int(t["pulses"].sum())
    # the one-shot gates are the map's: the median curve of its two cells (hand-computed at a map point)
    assert gate_for(np.array([10e-6]), np.array(GATE_V), np.array(G_S))[0] == pytest.approx(1.0)

    summary, sent = _deploy(plan_path, tmp_path / "b.h5", plan_gates=False, cal_cells=2, gate_points=3)
    t = read_run(tmp_path / "b.h5").data["tiles"]
    assert summary["gate_source"] == "measured"
    assert sent[1] + sent[2] == int(t["pulses"].sum()) + 2 * 2 * 3  # one RESET + one SET per cell and gate


def test_a_plan_without_a_map_calibrates_and_a_damaged_map_is_refused_before_any_pulse(tmp_path) -> None:
    summary, _ = _deploy(_plan(tmp_path), tmp_path / "a.h5", cal_cells=2, gate_points=3)
    assert summary["gate_source"] == "measured"
    bad = _plan(tmp_path, {"gate_v": [1.0, 0.9], "g_s": [[1e-6], [2e-6]]}, "bad.h5")  # gates not increasing
    with Board.open("sim://?seed=9&rows=8&cols=8&persist=0") as board:
        before = pulses(board.link.engine)  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="the plan's gate map is damaged.*--no-plan-gates"):
            run_procedure(DeployRun(DeployRun.Params(plan=str(bad)), board), tmp_path / "c.h5", quiet=True)
        assert (pulses(board.link.engine) == before).all()  # type: ignore[attr-defined]
