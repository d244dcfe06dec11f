"""The chip's defect map and defect-aware layout (issue 16 item 1).

Before, every tile sat at array (0, 0) whatever the chip's defects, shorted cells (reading ~60 uS, above
g_max) carried full weights, and unformable cells got a FORM ramp and two pulses per tile.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from hil.characterize import get_procedure
from hil.characterize.procedure import run_procedure
from hil.characterize.read_noise import ReadNoise, ReadNoiseParams
from hil.characterize.runfile import RunData, read_run
from hil.deploy.defects import (
    HEALTHY,
    STUCK_OFF,
    STUCK_ON,
    STUCK_ON_FACTOR,
    UNFORMABLE,
    DefectMap,
    DefectMapError,
    defect_map_from_runs,
)
from hil.deploy.layout import arrange, pair_wanted, tile_cost
from hil.deploy.placement import build_plan, weights_from_conductances
from hil.deploy.plan import PlanError, load_plan, save_plan
from hil.deploy.procedure import DeployRun
from hil.deploy.readback import measured_matrices
from hil.hardware.board import Board
from models.noise.apply import clean_weights

G_MIN, G_MAX = 1e-6, 40e-6
SPAN = G_MAX - G_MIN


def _truth(board: Board) -> tuple[np.ndarray, np.ndarray]:
    """Simulator ground truth (for expectations only): shorted cells, and cells that can never be formed."""
    arr = board.link.engine.array  # type: ignore[attr-defined]
    shape = (board.rows, board.cols)
    on = arr.stuck_start_lrs.reshape(shape)
    return on, ((arr.stuck_start_hrs | ~arr.can_form).reshape(shape) & ~on)


def _form(board: Board, path, cells: str):
    cls = get_procedure("form")
    run_procedure(cls(cls.Params(cells=cells), board), path, force=True, quiet=True)
    return path


def test_form_runs_give_the_simulated_chips_defects(tmp_path) -> None:
    """Seed 4's 16x16 chip has 3 shorts and 2 never-formable cells; both form runs find exactly those."""
    with Board.open("sim://?seed=4&rows=16&cols=16&persist=0") as board:
        on, off = _truth(board)
        assert on.sum() >= 1 and off.sum() >= 1  # the seed is chosen to hold both kinds
        first = _form(board, tmp_path / "form1.h5", "0:16,0:16")  # a pristine chip: shorts conduct at once
        m = defect_map_from_runs([first], 16, 16, G_MIN, G_MAX)
        np.testing.assert_array_equal(m.state == STUCK_ON, on)
        np.testing.assert_array_equal(m.state == UNFORMABLE, off)
        assert np.all(m.g[on] > 5e-6) and np.all(m.g[off] < 5e-6) and np.isnan(m.g[m.state == HEALTHY]).all()
        # an already formed chip: every formed cell answers at once, so only a read above 1.2 g_max names a short
        again = _form(board, tmp_path / "form2.h5", "0:16,0:16")
        m2 = defect_map_from_runs([again], 16, 16, G_MIN, G_MAX)
        np.testing.assert_array_equal(m2.state == UNFORMABLE, off)
        np.testing.assert_array_equal(m2.state == STUCK_ON, on & (m.g > STUCK_ON_FACTOR * G_MAX))
        both = defect_map_from_runs([first, again], 16, 16, G_MIN, G_MAX)  # a map only grows
        np.testing.assert_array_equal(both.state, m.state)
        assert len(both.sources) == 2
    with pytest.raises(DefectMapError, match="outside this 8x8 chip"):
        defect_map_from_runs([first], 8, 8, G_MIN, G_MAX)


def test_a_run_of_another_kind_is_refused_in_one_line(tmp_path) -> None:
    with Board.open("sim://?seed=4&rows=4&cols=4&persist=0") as board:
        _form(board, tmp_path / "form.h5", "0:2,0:2")
        params = ReadNoiseParams(cells="0:2,0:2", reads=3, skip_unformed=True)
        run_procedure(ReadNoise(params, board), tmp_path / "rn.h5", force=True, quiet=True)
    with pytest.raises(DefectMapError, match="'read-noise' run: a defect map comes from a form run"):
        defect_map_from_runs([tmp_path / "rn.h5"], 4, 4, G_MIN, G_MAX)


def _lin(out: int, fan_in: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(fan_in, out, bias=False)


def _planted(rows: int, cols: int, cells: list[tuple[int, int, int, float]]) -> DefectMap:
    m = DefectMap.healthy(rows, cols)
    for r, c, state, g in cells:
        m.state[r, c], m.g[r, c] = state, g
    return m


def test_spare_rows_and_columns_take_the_defects() -> None:
    """A 6x8-device tile on a 8x10 array has 2 spare rows and 2 spare columns: 2 planted defects hit nothing."""
    dmap = _planted(8, 10, [(0, 0, STUCK_ON, 60e-6), (3, 5, UNFORMABLE, 0.01e-6)])
    plan = build_plan(_lin(4, 6), G_MIN, G_MAX, {}, 8, 10, defects=dmap)
    rep = plan.meta["placement"]
    assert rep["naive"]["devices_on_defects"] == 2 and rep["placed"]["devices_on_defects"] == 0
    assert rep["placed"]["weight_on_defects"] == 0 and rep["naive"]["weight_on_defects"] > 0
    rows, cols = plan.tile_cells(0)
    assert 0 not in rows.tolist() or 0 not in cols.tolist()
    assert not dmap.defective[np.ix_(rows, cols)].any()


def test_a_stuck_on_cell_gets_a_cancelled_weight_when_nothing_is_spare() -> None:
    """No spare row or column: the short takes a large positive weight's G+, and the partner G- cancels it."""
    lin = _lin(2, 4)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[0.1, -0.2, 0.05, -0.1], [1.0, 0.3, -0.4, 0.2]])  # scale = max|W| = 1
    g_s = 55e-6
    dmap = _planted(4, 4, [(0, 0, STUCK_ON, g_s)])
    plan = build_plan(lin, G_MIN, G_MAX, {}, 4, 4, defects=dmap)
    lp = plan.layers[0]
    rows, cols = plan.tile_cells(0)
    i, j = int(np.flatnonzero(rows == 0)[0]), int(np.flatnonzero(cols == 0)[0])
    # weight W[1, 0] = 1.0 wants G+ - G- = 39 uS: G+ stuck at 55 uS, G- = 55 - 39 = 16 uS cancels it exactly
    assert (i, j) == (0, 2)
    assert lp.targets[0, 2] == pytest.approx(G_MAX)  # the stuck device's target: what it holds, inside the window
    assert lp.targets[0, 3] == pytest.approx(g_s - SPAN)
    rep = plan.meta["placement"]
    assert rep["placed"]["residual_error"] == pytest.approx(0, abs=1e-9)
    assert rep["naive"]["residual_error"] == pytest.approx((g_s - (G_MIN + 0.1 * SPAN)) / SPAN)
    # the chip as it will read (targets, the short at 55 uS) rebuilds every weight exactly
    chip = lp.targets.copy()
    chip[i, j] = g_s
    rebuilt = weights_from_conductances(plan, [chip])["weight"]
    torch.testing.assert_close(rebuilt, lin.weight.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_the_layout_never_costs_more_than_the_naive_one_and_beats_it_on_planted_defects(seed) -> None:
    """Each alternation step is an optimal assignment that may keep the current maps, so cost never rises."""
    rng = np.random.default_rng(seed)
    model = _lin(12, 16, seed)
    dmap = DefectMap.healthy(16, 24)
    bad = rng.random((16, 24)) < 0.03
    bad[rng.integers(16), rng.integers(24)] = True  # at least one defect inside the used area
    dmap.state[bad] = rng.choice([UNFORMABLE, STUCK_ON], bad.sum())
    dmap.g[bad] = np.where(dmap.state[bad] == STUCK_ON, rng.uniform(45e-6, 90e-6, bad.sum()), 0.01e-6)
    d = pair_wanted(build_plan(model, G_MIN, G_MAX, {}, 16, 24).layers[0].targets)
    naive = tile_cost(arrange(d, DefectMap.healthy(16, 24), G_MIN, G_MAX), d, dmap, G_MIN, G_MAX)
    maps = arrange(d, dmap, G_MIN, G_MAX)
    assert sorted(set(maps.rows.tolist())) == sorted(maps.rows.tolist())  # injective
    placed = tile_cost(maps, d, dmap, G_MIN, G_MAX)
    assert placed < naive  # the 16 x 24 tile fills the array, so only permutation (and partners) can help


def test_permuted_tiles_are_undone_exactly_on_read_back(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    rng = np.random.default_rng(3)
    dmap = DefectMap.healthy(8, 8)
    dmap.state[rng.random((8, 8)) < 0.1] = UNFORMABLE
    plan = build_plan(model, G_MIN, G_MAX, {}, 8, 8, defects=dmap)
    assert plan.tile_rows is not None and any(
        not np.array_equal(r, np.arange(r.size)) for r in plan.tile_rows
    )  # some tile really moved
    back = load_plan(save_plan(plan, tmp_path / "p.h5"))
    recs = []
    for ti, t in enumerate(back.tiles):  # a chip that reads every target exactly, recorded at its array cells
        rows, cols = back.tile_cells(ti)
        g = np.full((8, 8), np.nan)
        lp = back.layers[int(t["layer"])]
        g[np.ix_(rows, cols)] = lp.targets[t["r0"] : t["r0"] + t["nr"], t["c0"] : t["c0"] + t["nc"]]
        recs.append((ti, g.ravel()))
    tiles = np.array(recs, dtype=[("tile", "i4"), ("g_read", "f8", (64,))])
    mats = measured_matrices(back, cast(RunData, SimpleNamespace(data={"tiles": tiles}, path=tmp_path / "d.h5")))
    for lp, m in zip(back.layers, mats):
        np.testing.assert_array_equal(m, lp.targets)
    assert back.defects is not None
    np.testing.assert_array_equal(back.defects.state, dmap.state)


def test_plan_1_0_files_still_load_and_bad_layouts_are_refused(tmp_path) -> None:
    plan = build_plan(_lin(4, 6), G_MIN, G_MAX, {}, 8, 8, defects=_planted(8, 8, [(0, 0, STUCK_ON, 60e-6)]))
    good = save_plan(plan, tmp_path / "p.h5")
    old = tmp_path / "old.h5"
    old.write_bytes(good.read_bytes())
    with h5py.File(old, "r+") as f:  # what a 1.0 plan holds: no tile maps, no defect map
        f.attrs["format_version"] = "1.0"
        for key in ("tile_rows", "tile_cols", "defects"):
            del f[key]
    back = load_plan(old)
    assert back.defects is None and back.tile_rows is None
    np.testing.assert_array_equal(back.tile_cells(0)[0], np.arange(6))
    for edit, msg in [
        (lambda f: f["tile_rows"].__setitem__(1, f["tile_rows"][0]), "not 6 distinct array rows"),
        (lambda f: f["tile_cols"].__setitem__(0, 8), "not 8 distinct array columns in 0..7"),
        (lambda f: f.__delitem__("tile_cols"), "only one of tile_rows and tile_cols"),
        (lambda f: f["defects/state"].__setitem__((1, 1), 9), "states other than"),
    ]:
        bad = tmp_path / "bad.h5"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            edit(f)
        with pytest.raises(PlanError, match=msg) as err:
            load_plan(bad)
        assert "\n" not in str(err.value)


class _Pulses:
    """Cells that got a FORM, SET, RESET or WRITE_VERIFY through a Board (wraps its methods)."""

    def __init__(self, monkeypatch) -> None:
        self.cells: set[tuple[int, int]] = set()
        for name in ("form", "set_pulse", "reset_pulse"):
            orig = getattr(Board, name)
            monkeypatch.setattr(Board, name, self._one(orig))
        orig_wv = Board.write_verify

        def wv(board, rows, cols, *a, **k):
            self.cells.update(zip(np.asarray(rows).tolist(), np.asarray(cols).tolist()))
            return orig_wv(board, rows, cols, *a, **k)

        monkeypatch.setattr(Board, "write_verify", wv)

    def _one(self, orig):
        def f(board, row, col, *a, **k):
            self.cells.add((int(row), int(col)))
            return orig(board, row, col, *a, **k)

        return f


def _deploy(url: str, plan, tmp_path, name: str) -> tuple[dict, list[np.ndarray]]:
    path = save_plan(plan, tmp_path / f"{name}.plan.h5", force=True)
    with Board.open(url) as board:
        proc = DeployRun(DeployRun.Params(plan=str(path), read_delay=1.0), board)
        summary = run_procedure(proc, tmp_path / f"{name}.h5", force=True, quiet=True).summary
    return summary, measured_matrices(load_plan(path), read_run(tmp_path / f"{name}.h5"))


def test_known_defects_get_no_pulses_and_the_read_back_improves(tmp_path, monkeypatch) -> None:
    """On seed 4's 16x16 chip (3 shorts, 2 unformable): no pulse reaches a known defect, fewer weights are off.

    The old deployment formed and pulsed every cell of the used area, defective or not (the naive run below
    shows it still does without a map).
    """
    url = "sim://?seed=4&rows=16&cols=16&persist=0"
    with Board.open(url) as board:
        on, off = _truth(board)
        form = _form(board, tmp_path / "form.h5", "0:16,0:16")
    dmap = defect_map_from_runs([form], 16, 16, G_MIN, G_MAX)
    model = _lin(6, 12, seed=1)  # 12 x 12 devices on the 16 x 16 array: 4 spare rows and columns
    w = clean_weights(model)["weight"].detach()
    results = {}
    for name, defects in (("naive", None), ("aware", dmap)):
        plan = build_plan(model, G_MIN, G_MAX, {}, 16, 16, defects=defects)
        pulses = _Pulses(monkeypatch)
        summary, mats = _deploy(url, plan, tmp_path, name)
        monkeypatch.undo()
        hit = {cell for cell in pulses.cells if on[cell] or off[cell]}
        err = weights_from_conductances(load_plan(tmp_path / f"{name}.plan.h5"), mats)["weight"] - w
        results[name] = (hit, float((err**2).sum()), summary)
    assert results["aware"][0] == set() and results["aware"][2]["defects_known"] == int(dmap.defective.sum())
    naive_hit = results["naive"][0]
    assert naive_hit, "the seed's defects lie in the 12x12 corner the naive layout uses"
    # a short carries up to 60 uS of error against ~2 uS of noise per healthy device: avoiding it cuts the
    # summed squared weight error by far more than the noise of one deployment can change it
    assert results["aware"][1] < 0.5 * results["naive"][1]


def test_rram_program_takes_the_defect_map_from_a_form_run(tmp_path, capsys, monkeypatch) -> None:
    from tests.helpers.cli import assert_one_line_error, rram
    from tests.hil.deploy.test_deploy import _lognormal_profile, _model_file

    board = "sim://?seed=6&rows=16&cols=16&persist=0"  # 3 shorts, 7 cells that never form
    model = _model_file(tmp_path / "m.pt")  # 64 -> 4 -> 10: (64 x 8) and (4 x 20) devices
    prof = _lognormal_profile(tmp_path, capsys, monkeypatch, "--pulses-verified", "10")
    with Board.open(board) as b:
        form = _form(b, tmp_path / "form.h5", "0:16,0:16")
        rn = tmp_path / "rn.h5"
        run_procedure(ReadNoise(ReadNoiseParams(cells="0:2,0:2", reads=3, skip_unformed=True), b), rn, quiet=True)
    args = ["program", str(model), "--profile", str(prof), "--port", board, "-q"]
    r = rram(capsys, monkeypatch, *args, "--defects", str(rn), "-o", str(tmp_path / "x.h5"))
    assert_one_line_error(r, "'read-noise' run: a defect map comes from a form run")
    out = tmp_path / "d.h5"
    r = rram(capsys, monkeypatch, *args, "--defects", str(form), "-o", str(out))
    assert r.code == 0, r.text
    plan = load_plan(tmp_path / "d.plan.h5")
    assert plan.defects is not None and plan.defects.counts()["stuck_on"] >= 1
    rep = plan.meta["placement"]
    assert rep["defect_aware"] and rep["placed"]["weight_on_defects"] < rep["naive"]["weight_on_defects"]
    assert read_run(out).summary["defects_known"] == int(plan.defects.defective.sum())


def test_the_prediction_draws_only_the_stuck_devices_the_defect_map_did_not_catch() -> None:
    """Issue 16 item 4: a plan placed around a defect map keeps its known defects harmless, so the Monte Carlo
    prediction draws the profile's stuck fractions less the map's share; a naive plan draws the profile's."""
    from hil.deploy.readback import predicted_stuck_fractions

    # 100 cells: 1 short (1 %) and 2 unformable + 1 stuck-off (3 %) known
    dmap = _planted(10, 10, [(0, 0, STUCK_ON, 60e-6), (1, 1, UNFORMABLE, 0.0), (2, 2, UNFORMABLE, 0.0)])
    dmap.state[3, 3] = STUCK_OFF
    assert dmap.unknown_stuck_fractions((0.015, 0.02)) == pytest.approx((0.005, 0.0))  # 0.02 - 0.03 clips at 0
    placed = build_plan(_lin(4, 6), G_MIN, G_MAX, {}, 10, 10, defects=dmap)
    assert predicted_stuck_fractions(placed, (0.015, 0.02)) == pytest.approx((0.005, 0.0))
    naive = build_plan(_lin(4, 6), G_MIN, G_MAX, {}, 10, 10)
    assert predicted_stuck_fractions(naive, (0.015, 0.02)) == (0.015, 0.02)
