"""A deployed chip read again later (issue 16 item 3): at its age on the board's clock, on the deployed chip only,
read as the plan laid its tiles out; the relaxation the simulator adds by then shows in the reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import RunFileError, read_run
from hil.deploy.placement import build_plan
from hil.deploy.plan import load_plan, save_plan
from hil.deploy.procedure import DeployRun
from hil.deploy.readback import aged_reads, matrices_from_cells, measured_matrices, reread_reads
from hil.deploy.reread import RereadRun, age_label, deployment_end_s, parse_age
from hil.hardware.board import Board

G_MIN, G_MAX = 4e-6, 36e-6


def _deploy_and_reread(tmp_path, ages: list[float], reads: int = 2, layers: int = 1, deploy: dict | None = None):
    """Deploy a small MLP on an 8x8 chip (one layer: one tile; two layers: three tiles on the same cells), reread it."""
    torch.manual_seed(1)
    model = (
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)) if layers == 2 else nn.Sequential(nn.Linear(7, 4))
    )
    g = torch.Generator().manual_seed(2)
    mask = {k: torch.rand(v.shape, generator=g) < 0.4 for k, v in model.state_dict().items() if k.endswith("weight")}
    plan_path = save_plan(build_plan(model, G_MIN, G_MAX, mask, rows=8, cols=8), tmp_path / "plan.h5")
    url = "sim://?seed=5&rows=8&cols=8&persist=0"
    with Board.open(url) as board:
        params = DeployRun.Params(plan=str(plan_path), reverify=0, **(deploy or {}))
        run_procedure(DeployRun(params, board), tmp_path / "d.h5", quiet=True)
        outs = []
        for age in ages:
            p = RereadRun.Params(deploy=str(tmp_path / "d.h5"), at=age, reads=reads)
            outs.append(run_procedure(RereadRun(p, board), tmp_path / f"r{age:g}.h5", quiet=True))
    return load_plan(plan_path), read_run(tmp_path / "d.h5"), [read_run(o.path) for o in outs]


def test_reread_reads_the_used_cells_at_their_age_and_the_spread_grows(tmp_path) -> None:
    plan, run, (day, year) = _deploy_and_reread(tmp_path, [86400.0, 365.25 * 86400.0])
    tiles = run.data["tiles"]
    end = deployment_end_s(tiles)
    for rr, age in ((day, 86400.0), (year, 365.25 * 86400.0)):
        r = rr.data["reads"]
        assert len(r) == 2 and r["read"].tolist() == [0, 1]
        # the clock jumped to end + age (ADVANCE_CLOCK is exact); the read itself takes microseconds
        assert age <= r["t"][0] - end < age + 1.0
        used = ~np.isnan(tiles["target"]).all(axis=0)
        assert np.isnan(r["g"][:, ~used]).all() and not np.isnan(r["g"][:, used]).any()
        assert rr.summary["age_s"] == pytest.approx(r["t"][0] - end)
    # the reread's cells go through the same layout: its matrices line up with the read-back's device by device
    t0 = np.concatenate([m.ravel() for m in measured_matrices(plan, run)])
    later = [
        np.concatenate([m.ravel() for m in matrices_from_cells(plan, rr.data["reads"]["g"][0], "x")])
        for rr in (day, year)
    ]
    targets = np.concatenate([lp.targets.ravel() for lp in plan.layers])
    ok = np.abs(t0 - targets) < 10e-6  # healthy devices (a stuck one reads far off at every age)
    # a layout undone wrongly would pair reads with other devices' targets: correlation ~0 +- 1/sqrt(56) = 0.13,
    # while the right one keeps the read tracking its target through a day of relaxation
    assert ok.sum() > 50 and all(np.corrcoef(targets[ok], x[ok])[0, 1] > 0.4 for x in later)
    # relaxation keeps widening the error in log time: 1 s < 1 day < 1 year (SIM.md, IBM's polynomials)
    spread = [np.std((x - targets)[ok]) for x in (t0, *later)]
    assert spread[0] < spread[1] < spread[2]
    # what `rram evaluate --deployed --reread` judges: both reads, at the reread's age from each tile's programming
    seen = reread_reads(plan, run, day.path)
    assert len(seen.weights) == 2 and seen.age_s == pytest.approx(86400.0 + end - tiles["t_prog"].mean(), abs=1.0)
    assert np.array_equal(seen.tiles["g_read"][0], day.data["reads"]["g"][0], equal_nan=True)
    with pytest.raises(RunFileError, match="not a reread"):
        reread_reads(plan, run, run.path)


def test_reread_on_another_chip_or_a_restarted_clock_is_refused_before_any_read(tmp_path) -> None:
    _deploy_and_reread(tmp_path, [3600.0], reads=1)
    with Board.open("sim://?seed=6&rows=8&cols=8&persist=0") as other:
        before = other.counters()
        with pytest.raises(ValueError, match="reread the deployed chip"):
            RereadRun(RereadRun.Params(deploy=str(tmp_path / "d.h5")), other).validate()
        assert other.counters() == before
    # the same chip in a new session: its throwaway clock started again at 0, behind the deployment's end
    with Board.open("sim://?seed=5&rows=8&cols=8&persist=0") as again:
        with pytest.raises(ValueError, match="clock .* is behind the deployment's end"):
            run_procedure(
                RereadRun(RereadRun.Params(deploy=str(tmp_path / "d.h5")), again), tmp_path / "x.h5", quiet=True
            )
    # a reread's own file is not a deployment
    with Board.open("sim://?seed=5&rows=8&cols=8&persist=0") as b:
        with pytest.raises(RunFileError, match="not a deployment"):
            RereadRun(RereadRun.Params(deploy=str(tmp_path / "r3600.h5")), b).validate()


def test_a_deployment_reads_each_tile_at_its_ages_before_the_next_tile_reuses_the_cells(tmp_path) -> None:
    plan, run, _ = _deploy_and_reread(tmp_path, [], layers=2, deploy={"ages": "1h,1d", "reads": 2})
    tiles, aged = run.data["tiles"], run.data["aged"]
    assert len(plan.tiles) == 3 and len(aged) == 3 * 2 * 2  # tiles (6x10 devices need two 8x8 tiles) x ages x reads
    for rec in tiles:
        mine = aged[aged["tile"] == rec["tile"]]
        assert sorted({float(a) for a in mine["age"]}) == [3600.0, 86400.0]
        for a in (3600.0, 86400.0):
            at = mine[mine["age"] == a]
            assert at["read"].tolist() == [0, 1]
            assert np.all(
                (at["t"] - rec["t_prog"] >= a) & (at["t"] - rec["t_prog"] < a + 1.0)
            )  # ADVANCE_CLOCK is exact
            used = ~np.isnan(rec["target"])
            assert not np.isnan(at["g"][:, used]).any() and np.isnan(at["g"][:, ~used]).all()
    # each tile is programmed after the previous one's last aged read: its cells held the previous tile until then
    for ti in (1, 2):
        assert tiles["t_prog"][ti] > aged["t"][aged["tile"] == ti - 1].max()
    one_day = aged_reads(plan, run, 86400.0)
    assert len(one_day.weights) == 2 and one_day.age_s == pytest.approx(86400.0, abs=1.0)
    with pytest.raises(RunFileError, match="no reads at age 7 s"):
        aged_reads(plan, run, 7.0)
    # a later reread cannot see the first tile any more: refused, saying why
    with Board.open("sim://?seed=5&rows=8&cols=8&persist=0") as board:
        with pytest.raises(ValueError, match="tiles share cells"):
            RereadRun(RereadRun.Params(deploy=str(tmp_path / "d.h5")), board).validate()


def test_ages_parse_and_print() -> None:
    assert parse_age("1d") == 86400.0 and parse_age("30min") == 1800.0 and parse_age("2.5") == 2.5
    assert parse_age("1y") == 365.25 * 86400.0
    with pytest.raises(ValueError, match="is not an age"):
        parse_age("tomorrow")
    ages = (3600.0, 86400.01, 365.25 * 86400.0, 5.0, 90.0)
    assert [age_label(a, " ") for a in ages] == ["1 h", "1 d", "1 y", "5 s", "1.5 min"]
