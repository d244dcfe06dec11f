"""Program-settle-verify: drifted verified devices are touched up, counted in the record, the summary and the plan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from calibration.profile import NoiseProfile, save_profile
from firmware_protocol.constants import CellResult
from hil.characterize.multilevel import RESET_GATE, RESET_V, RESET_WIDTH_NS, gate_for, one_shot
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import read_run
from hil.deploy import DeploySettings, planned_cost
from hil.deploy.defects import STUCK_ON, DefectMap
from hil.deploy.placement import build_plan
from hil.deploy.plan import load_plan, save_plan
from hil.deploy.procedure import DeployParams, DeployRun
from hil.hardware.board import BlockMeasurement, Board, PulseRamp, WriteVerifyOutcome
from models.noise.apply import clean_weights
from models.swim.planning import Reverify, SwimPlanner, out_of_tolerance, write_cycles

G_MIN, G_MAX = 4e-6, 36e-6
TOL = 0.8e-6
URL = "sim://?seed=21&rows=4&cols=4&persist=0"  # a pristine copy of the same chip for every deployment
# Today's tiles fields: reverify=0 must leave them exactly as the procedure before re-verify wrote them.
OLD_FIELDS = ("tile", "target", "verify", "g_prog", "pulses", "status", "g_read", "t_prog", "t_read")


def _plan(tmp_path: Path, frac: float = 0.5, defects: DefectMap | None = None) -> Path:
    """One 4x4 tile (a 4 -> 2 linear layer as device pairs), `frac` of its weights marked for write-verify."""
    torch.manual_seed(3)
    model = nn.Linear(4, 2, bias=False)
    g = torch.Generator().manual_seed(4)
    mask = {k: torch.rand(v.shape, generator=g) < frac for k, v in clean_weights(model).items()}
    return save_plan(build_plan(model, G_MIN, G_MAX, mask, 4, 4, defects=defects), tmp_path / "plan.h5", force=True)


def _deploy(plan: Path, out: Path, **kw: Any) -> tuple[dict, np.ndarray]:
    with Board.open(URL) as board:
        params = DeployRun.Params(plan=str(plan), **kw)
        summary = run_procedure(DeployRun(params, board), out, quiet=True).summary
    return summary, read_run(out).data["tiles"]


@dataclass(frozen=True)
class _WV:
    """One WRITE_VERIFY the deployment sent: its cells and what the board answered."""

    rows: np.ndarray
    cols: np.ndarray
    out: WriteVerifyOutcome

    @property
    def cells(self) -> np.ndarray:
        return self.rows * 4 + self.cols  # row-major on the 4x4 array


class _Spy:
    """The board calls a deployment makes, in order: write-verifies, waits and block reads (their conductances)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, drift_cell: tuple[int, int] | None = None) -> None:
        self.kinds: list[str] = []
        self.wvs: list[_WV] = []
        self.reads: list[np.ndarray] = []
        wv, wait, block = Board.write_verify, Board.wait, Board.read_block

        def write_verify(board: Board, rows: Any, cols: Any, *a: Any, **k: Any) -> WriteVerifyOutcome:
            o = wv(board, rows, cols, *a, **k)
            self.kinds.append("wv")
            self.wvs.append(_WV(np.asarray(rows), np.asarray(cols), o))
            return o

        def waited(board: Board, seconds: float) -> None:
            wait(board, seconds)
            self.kinds.append("wait")
            if drift_cell is not None and self.kinds.count("wait") == 1:
                # the first settle: the cell "drifts" far (a full RESET to HRS) before the re-check reads it
                board.reset_pulse(*drift_cell, RESET_V, RESET_WIDTH_NS, RESET_GATE)

        def read_block(board: Board, *a: Any, **k: Any) -> BlockMeasurement:
            m = block(board, *a, **k)
            self.kinds.append("read")
            self.reads.append(m.conductance_s)
            return m

        monkeypatch.setattr(Board, "write_verify", write_verify)
        monkeypatch.setattr(Board, "wait", waited)
        monkeypatch.setattr(Board, "read_block", read_block)


def test_a_drifted_cell_is_touched_up_and_its_pulses_are_counted(tmp_path, monkeypatch) -> None:
    plan = _plan(tmp_path, frac=1.0)  # every device verified: one 4x4 tile on the 4x4 array
    target = load_plan(plan).layers[0].targets
    r, c = (int(x) for x in np.unravel_index(int(np.argmax(target)), target.shape))  # the highest target
    assert target[r, c] > 20e-6  # far above HRS
    spy = _Spy(monkeypatch, drift_cell=(r, c))
    summary, t = _deploy(plan, tmp_path / "d.h5", reverify=2, settle=1.0, read_delay=0.0)
    monkeypatch.undo()
    # per round: settle, read the tile, write-verify the out-of-tolerance devices; then the read-back
    wvs, checks = spy.wvs, spy.reads[:-1]  # the last read is the read-back
    assert spy.kinds[-1] == "read" and spy.kinds.count("wait") == len(checks)  # read_delay 0: no wait
    assert 1 <= len(checks) <= 2 and len(wvs) - 1 in (len(checks), len(checks) - 1)  # a round may find none
    # the first write-verify lists the tile's 16 cells row-major (no defects: tile cell = array cell)
    assert np.array_equal(wvs[0].cells, np.arange(16))
    status = np.array(wvs[0].out.status)  # each device's latest write-verify status, row-major
    for k, g in enumerate(checks):  # round k+1: exactly the converged devices read out of tolerance come back
        out = set(np.flatnonzero((np.abs(g - target) > TOL).ravel() & (status == CellResult.CONVERGED)).tolist())
        if k + 1 < len(wvs):
            assert set(wvs[k + 1].cells.tolist()) == out
            status[wvs[k + 1].cells] = wvs[k + 1].out.status
        else:
            assert not out  # the rounds stopped early: nothing left to touch up
    # the drifted cell: out of tolerance at the first check (RESET to HRS, far below its > 20 uS target) ...
    assert target[r, c] - checks[0][r, c] > 5 * TOL
    i = int(np.flatnonzero(wvs[1].cells == r * 4 + c)[0])
    touch = wvs[1].out
    # ... touched up, and the touch-up's own verify read ends within tolerance of the target
    assert touch.status[i] == CellResult.CONVERGED and abs(touch.final_s[i] - target[r, c]) <= TOL
    assert touch.pulses[i] >= 1
    # its pulses, and every device's, are the sum over all its write-verifies; touch-ups counted apart
    all_pulses, touch_pulses, touches = np.zeros(16, int), np.zeros(16, int), np.zeros(16, int)
    for n, w in enumerate(wvs):
        np.add.at(all_pulses, w.cells, w.out.pulses)
        if n:
            np.add.at(touch_pulses, w.cells, w.out.pulses)
            np.add.at(touches, w.cells, 1)
    rec = t[0]
    assert np.array_equal(rec["pulses"], all_pulses) and np.array_equal(rec["pulses_touchup"], touch_pulses)
    assert np.array_equal(rec["touchups"], touches) and rec["touchups"][r * 4 + c] >= 1
    assert summary["write_cycles"] == all_pulses.sum() and touch_pulses.sum() >= touch.pulses[i]
    assert summary["touchup_pulses"] == touch_pulses.sum() and summary["touchups"] == touches.sum()
    assert summary["touched_up_devices"] == int(np.sum(touches > 0))
    assert summary["settle_s"] == rec["t_settle"] == 1.0 * len(checks)


def _program_tile_before_reverify(self: DeployRun, ti: int, cal: np.ndarray) -> np.ndarray:
    """DeployRun._program_tile as it was before re-verify (commit 7c65d5f), verbatim: the reference for reverify=0."""
    p, plan = self.p, self.plan
    t = plan.tiles[ti]
    lp = plan.layers[int(t["layer"])]
    nr, nc = int(t["nr"]), int(t["nc"])
    tgt = lp.targets[t["r0"] : t["r0"] + nr, t["c0"] : t["c0"] + nc]
    ver = lp.verify[t["r0"] : t["r0"] + nr, t["c0"] : t["c0"] + nc]
    rows, cols = plan.tile_cells(ti)
    skip = self.skip[np.ix_(rows, cols)]
    rec = np.zeros(1, dtype=self.tables()["tiles"].dtype)[0]
    rec["tile"] = ti

    def full(a: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((plan.rows, plan.cols), fill, dtype=float)
        out[np.ix_(rows, cols)] = a
        return out.ravel()

    rec["target"], rec["verify"] = full(tgt, np.nan), full(ver, 0)
    g_prog = np.full((nr, nc), np.nan)
    pulses = np.zeros((nr, nc), dtype=np.int64)
    status = np.zeros((nr, nc), dtype=np.uint8)
    gates = gate_for(tgt.ravel(), cal["gate"], cal["g"]).reshape(nr, nc)
    for r, c in np.argwhere(~ver & ~skip):
        g_prog[r, c] = one_shot(self.board, int(rows[r]), int(cols[c]), float(gates[r, c]), p.v_read).conductance_s
        pulses[r, c] = 2
    vr, vc = np.nonzero(ver & ~skip)
    t_prog = 0.0
    if vr.size:
        o = self.board.write_verify(rows[vr], cols[vc], tgt[vr, vc], p.tol, p.max_pulses, PulseRamp(), p.v_read)
        g_prog[vr, vc], pulses[vr, vc], status[vr, vc] = o.final_s, o.pulses, o.status
        t_prog = o.timestamp_s
    if p.read_delay > 0:
        self.board.wait(p.read_delay)
    r0, c0 = int(rows.min()), int(cols.min())
    block = self.board.read_block(r0, c0, int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1, p.v_read)
    m_g = block.conductance_s[np.ix_(rows - r0, cols - c0)]
    rec["g_prog"], rec["pulses"], rec["status"] = full(g_prog, np.nan), full(pulses, 0), full(status, 0)
    rec["g_read"], rec["t_prog"], rec["t_read"] = (full(m_g, np.nan), t_prog or block.timestamp_s, block.timestamp_s)
    return np.array([rec])


def test_reverify_0_writes_todays_records_exactly(tmp_path, monkeypatch) -> None:
    plan = _plan(tmp_path)
    now_summary, now = _deploy(plan, tmp_path / "now.h5", reverify=0, settle=5.0)  # settle is inert without rounds
    with monkeypatch.context() as m:
        m.setattr(DeployRun, "_program_tile", _program_tile_before_reverify)
        before_summary, before = _deploy(plan, tmp_path / "before.h5", reverify=0)
    for name in OLD_FIELDS:
        assert np.array_equal(now[name], before[name], equal_nan=True), name
    assert not now["touchups"].any() and not now["pulses_touchup"].any() and not now["t_settle"].any()
    assert now_summary == before_summary and now_summary["touchups"] == 0 and now_summary["settle_s"] == 0.0
    # and the rounds do change the programming: the same chip with one round touches devices up
    on_summary, on = _deploy(plan, tmp_path / "on.h5", reverify=1)
    assert on_summary["touchups"] > 0 and on_summary["write_cycles"] > now_summary["write_cycles"]
    assert np.array_equal(on["pulses"][on["verify"] == 0], now["pulses"][now["verify"] == 0])  # one-shots: 2 each


def test_defective_cells_get_no_touch_up(tmp_path, monkeypatch) -> None:
    dmap = DefectMap.healthy(4, 4)
    dmap.state[1, 2], dmap.g[1, 2] = STUCK_ON, 60e-6  # known short: no pulse at all, however it reads
    plan = _plan(tmp_path, frac=1.0, defects=dmap)
    spy = _Spy(monkeypatch)
    summary, t = _deploy(plan, tmp_path / "d.h5", reverify=3, settle=1.0)
    monkeypatch.undo()
    hit = {int(x) for w in spy.wvs for x in w.cells}
    assert 1 * 4 + 2 not in hit and len(spy.wvs) >= 2  # the rounds ran, the short stayed untouched
    assert t[0]["pulses"][1 * 4 + 2] == 0 and t[0]["touchups"][1 * 4 + 2] == 0
    assert summary["defects_known"] == 1


# ------------------------------------------------------------------------------ the plan's write-cycle budget

# gaussian family: sigma 2 % of g_max = 0.8 uS at every g, read noise 1 % of g_max = 0.4 uS (a paper family's
# sigma holds no read, so one read's noise adds), no relaxation, mean error 0: read error N(0, 0.8 uS^2 + 0.4^2)
# and P(|e| > 0.8 uS) = erfc(0.8 / (sqrt(0.8) sqrt(2))) = erfc(sqrt(0.4)) = 0.3710 for every device.
P_OUT = math.erfc(math.sqrt(0.4))
PPD_V, PPD_O = 12.0, 1.0  # the profile's pulses per write-verified / one-shot device


def _gaussian() -> NoiseProfile:
    return NoiseProfile.from_paper("gaussian", sigma=0.02, read_noise=0.01, pulses_verified=PPD_V)


def test_the_budget_counts_the_expected_touch_ups_by_hand() -> None:
    prof = _gaussian()
    assert P_OUT == pytest.approx(0.37109, abs=1e-5)
    g = np.linspace(prof.g_min, prof.g_max, 7)
    np.testing.assert_allclose(out_of_tolerance(prof, g, 1.0, TOL), P_OUT, rtol=1e-12)
    verified = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)  # 3 verified, 5 one-shot devices
    for rounds in (0, 1, 2):
        cost = write_cycles(prof, np.full(8, 20e-6), verified, Reverify(rounds, 1.0, TOL))
        touch = 3 * rounds * P_OUT  # expected touch-ups: rounds x P(out) per verified device
        cycles = 3 * PPD_V + 5 * PPD_O + touch * PPD_V  # a touch-up costs one write-verify's pulses
        full = 8 * PPD_V * (1 + rounds * P_OUT)  # every device verified, with the same rounds
        assert cost.touchups == pytest.approx(touch, rel=1e-12)
        assert cost.cycles == pytest.approx(cycles, rel=1e-12) and cost.cycles_norm == pytest.approx(cycles / full)
    # the swim planner prices its masks the same way (2 devices per weight)
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.zeros(2, 5), torch.zeros(2, dtype=torch.long)
    for rounds in (0, 2):
        planner = SwimPlanner(model, prof, x, y, reverify=Reverify(rounds, 1.0, TOL))
        mask = planner.mask("magnitude", 0.4)
        n_ver = int(sum(int(m.sum()) for m in mask.values()))
        assert n_ver == 6  # 40 % of 15 weights
        cycles = 2 * n_ver * PPD_V + 2 * (15 - n_ver) * PPD_O + 2 * n_ver * rounds * P_OUT * PPD_V
        full = 2 * 15 * PPD_V * (1 + rounds * P_OUT)
        assert planner.cycles(mask) == pytest.approx((cycles, cycles / full), rel=1e-6)  # float32 target sums
        assert planner.point("magnitude", 0.4).touchups == pytest.approx(2 * n_ver * rounds * P_OUT, rel=1e-6)


def test_relaxation_at_the_settle_time_raises_the_touch_up_odds() -> None:
    """IBM's ReRAM 1 s profile: its 1 s -> 1 day growth is the relaxation; a 10 s settle adds one decade of it."""
    prof = NoiseProfile.from_paper("ibm_reram", time="1s", pulses_verified=PPD_V)
    g = np.array([5e-6, 20e-6, 35e-6])
    sig_v, read = prof.programming_sigma(g, verified=True), prof.read_sigma(g)
    extra = prof.relaxation(g, 10.0)[1]
    assert np.all(extra > 0) and np.all(prof.relaxation(g, 1.0)[1] == 0)  # its relaxation counts from 1 s
    for settle, ex in ((1.0, 0.0), (10.0, extra)):
        s = np.sqrt(sig_v**2 + ex**2 + read**2)
        hand = np.array([math.erfc(TOL / (si * math.sqrt(2))) for si in s])  # mean error 0 in this family
        np.testing.assert_allclose(out_of_tolerance(prof, g, settle, TOL), hand, rtol=1e-12)
    assert np.all(out_of_tolerance(prof, g, 10.0, TOL) > out_of_tolerance(prof, g, 1.0, TOL))


def test_the_plan_file_budget_follows_the_deploy_settings(tmp_path) -> None:
    path = save_profile(_gaussian(), tmp_path / "g.h5")
    plan = load_plan(_plan(tmp_path))
    n, v = plan.n_devices, plan.n_verified
    assert 0 < v < n
    for rounds, settle in ((0, 1.0), (2, 3.0)):
        meta = planned_cost(plan, path, DeploySettings(reverify=rounds, settle_s=settle))
        cycles = v * PPD_V * (1 + rounds * P_OUT) + (n - v) * PPD_O
        assert meta["planned_cycles"] == pytest.approx(cycles, rel=1e-12)
        assert meta["planned_cycles_norm"] == pytest.approx(cycles / (n * PPD_V * (1 + rounds * P_OUT)), rel=1e-12)
        assert meta["planned_touchups"] == pytest.approx(v * rounds * P_OUT, rel=1e-12)
        assert meta["planned_settle_s"] == len(plan.tiles) * rounds * settle
        assert meta["reverify"] == {"rounds": rounds, "settle_s": settle, "tol_s": TOL}
    # a device on a known defect gets no pulses, so the budget leaves it out
    dmap = DefectMap.healthy(4, 4)
    dmap.state[1, 2], dmap.g[1, 2] = STUCK_ON, 60e-6
    plan = load_plan(_plan(tmp_path, defects=dmap))
    rows, cols = plan.tile_cells(0)
    on_defect = bool(plan.layers[0].verify[int(np.flatnonzero(rows == 1)[0]), int(np.flatnonzero(cols == 2)[0])])
    n, v = plan.n_devices - 1, plan.n_verified - on_defect
    meta = planned_cost(plan, path, DeploySettings(reverify=1))
    assert meta["planned_cycles"] == pytest.approx(v * PPD_V * (1 + P_OUT) + (n - v) * PPD_O, rel=1e-12)


def test_defaults_agree_across_the_layers() -> None:
    """`rram program`, deploy_model and the planner's cost model assume the same rounds, settle and tolerance."""
    p, s, r = DeployParams(), DeploySettings(), Reverify()
    assert (p.reverify, p.settle, p.tol) == (s.reverify, s.settle_s, s.tol_s) == (r.rounds, r.settle_s, r.tol_s)


# ------------------------------------------------------------------------------ bad values


def test_bad_settle_and_reverify_are_refused_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    from tests.helpers.cli import assert_one_line_error, rram

    plan = _plan(tmp_path)
    with Board.open(URL) as board:
        for kw, msg in (
            ({"settle": -1.0}, "program needs --settle >= 0 s (got -1.0)"),
            ({"settle": math.nan}, "program needs --settle >= 0 s (got nan)"),
            ({"reverify": -1}, "program needs 0 <= --reverify <= 255 (got -1)"),
            ({"reverify": 1.5}, "program needs a whole number of re-verify rounds (--reverify), got 1.5"),
        ):
            with pytest.raises(ValueError) as err:
                DeployRun(DeployRun.Params(plan=str(plan), **kw), board)
            assert str(err.value) == msg and "\n" not in msg
    for args, frag in (
        (("--settle", "-1"), "program needs --settle >= 0 s (got -1)"),
        (("--reverify", "-2"), "program needs 0 <= --reverify <= 255 (got -2)"),
        (("--reverify", "1.5"), "'1.5' is not an integer"),
    ):
        r = rram(capsys, monkeypatch, "program", str(tmp_path / "m.pt"), "-o", str(tmp_path / "d.h5"), *args)
        assert_one_line_error(r, frag)
    for kw, msg in (
        ({"rounds": -1}, "re-verify rounds must be a whole number >= 0"),
        ({"rounds": 1.0}, "re-verify rounds must be a whole number >= 0"),
        ({"settle_s": -0.5}, "re-verify settle time must be a finite number of seconds >= 0"),
        ({"tol_s": 0.0}, "re-verify tolerance must be a finite conductance > 0 S"),
    ):
        with pytest.raises(ValueError, match=msg):
            Reverify(**kw)
