"""Every characterization procedure on the simulated board, in process and over a real pty, checked against
the simulated chip's ground truth (per-cell device draws, noiseless conductance, pulse counters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_protocol import CellResult
from hil.characterize.multilevel import level_targets, log_times
from hil.characterize.runfile import read_run
from sim_backend.device_params import DeviceParams
from tests.helpers.boards import as_measured, form_region, open_sim, pulses, run

P = DeviceParams()
SIGMA_READ = P.read_noise_frac * P.g_max  # white read noise in conductance at the 0.1 V reference read
TRANSPORTS = ["inproc", "pty"]


# ------------------------------------------------------------------------------------------- form
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_form_matches_each_cells_forming_threshold(transport: str, tmp_path: Path) -> None:
    seed = 3
    with open_sim(transport, seed) as (board, eng):
        a = eng.array
        # the row of a cell that can never form, so the failure path is exercised too
        row = int(np.flatnonzero(~a.can_form & ~a.stuck_start_lrs & ~a.stuck_start_hrs)[0] // 16)
        before = pulses(eng)
        out = run(
            board, "form", tmp_path / "form.h5", cells=f"{row}:{row + 1},0:16", v_start=2.0, v_stop=4.0, v_step=0.1
        )
        d = read_run(out.path).data["form"]
        idx = row * 16 + np.arange(16)
        start_lrs, dead = a.stuck_start_lrs[idx], a.stuck_start_hrs[idx] | ~a.can_form[idx]
        expect_formed = start_lrs | (~dead & (a.v_form[idx] <= 4.0 + 1e-9))
        assert np.array_equal(d["formed"].astype(bool), expect_formed)
        assert 0 < expect_formed.sum() < 16
        ramp = ~start_lrs & expect_formed
        # formed at the first ramp step at or above the cell's own threshold, after the matching number of pulses
        v_rec = d["v_form"][ramp].astype(float)
        assert np.all(v_rec >= a.v_form[idx][ramp] - 1e-3) and np.all(v_rec - 0.1 < a.v_form[idx][ramp])
        assert np.array_equal(d["pulses"][ramp], np.rint((v_rec - 2.0) / 0.1).astype(int) + 1)
        assert np.all(d["pulses"][start_lrs] == 0) and np.all(d["pulses"][dead] == 21)
        # formed cells read the LRS of the forming compliance; the board spent exactly the recorded pulses
        g_expect = as_measured(eng, P.g_lrs(1.0) * np.exp(a.lrs_d2d[idx][ramp]))
        assert np.median(d["g_after"][ramp] / g_expect) == pytest.approx(1.0, abs=0.06)
        assert np.array_equal(pulses(eng) - before, [int(d["pulses"].sum()), 0, 0])
        assert out.summary["formed"] == int(expect_formed.sum()) and out.summary["failed"] == 16 - expect_formed.sum()


# ------------------------------------------------------------------------------------------- I-V
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_iv_sweeps_show_the_compliance_of_the_gate(transport: str, tmp_path: Path) -> None:
    with open_sim(transport, seed=4) as (board, eng):
        idx, rows, cols, ok = form_region(eng, "0:1,0:3")
        before = pulses(eng)
        n = 21
        out = run(
            board, "iv", tmp_path / "iv.h5", cells="0:1,0:3", points=n, cycles=2, v_gate=1.0, v_max=1.5, v_min=-1.6
        )
        d = read_run(out.path).data["iv"]
        assert (
            len(d) == 6
            and np.array_equal(d["cell"][:, 1], [0, 0, 1, 1, 2, 2])
            and np.array_equal(d["cycle"], [0, 1] * 3)
        )
        branches = np.concatenate(
            [np.linspace(0, 1.5, n), np.linspace(1.5, 0, n), np.linspace(0, -1.6, n), np.linspace(-1.6, 0, n)]
        )
        assert np.allclose(d["v"], branches[None, :], atol=1e-3)
        i_cc = float(P.i_cc(1.0))
        up = d["i"][:, :n]
        # SET branch: the current saturates at the NMOS compliance (the pulse ADC resolves ~0.3 uA)
        assert np.allclose(up[ok.repeat(2)].max(axis=1), i_cc, rtol=0.08, atol=0.7e-6)
        # RESET branch: a negative current that switches off (much smaller at the end than at its peak)
        down = d["i"][:, 2 * n : 3 * n]
        assert np.all(down.min(axis=1) < -5e-6)
        # one pulse per positive (SET) and per negative (RESET) point of each sweep
        per_sweep = np.array([0, int((branches > 0).sum()), int((branches < 0).sum())])
        assert np.array_equal(pulses(eng) - before, 6 * per_sweep)


# ------------------------------------------------------------------------------------------- endurance
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_endurance_lrs_and_hrs_agree_with_the_device_law(transport: str, tmp_path: Path) -> None:
    with open_sim(transport, seed=5) as (board, eng):
        idx, rows, cols, ok = form_region(eng, "0:4,0:4")
        used0 = eng.array.cycles_used[idx].copy()
        before = pulses(eng)
        cycles, every, set_gate, reset_v = 200, 20, 1.1, -1.5
        out = run(
            board,
            "endurance",
            tmp_path / "end.h5",
            cells="0:4,0:4",
            cycles=cycles,
            read_every=every,
            set_gate=set_gate,
            reset_v=reset_v,
            cells_per_event=5,
        )
        d = read_run(out.path).data["endurance"]
        assert np.array_equal(d["cycle"], np.arange(every, cycles + 1, every))
        assert np.array_equal(pulses(eng) - before, [0, cycles * 16, cycles * 16])
        a = eng.array
        n = used0[None, :] + d["cycle"][:, None]
        wl, wh = P.wear_shift(n)
        lrs_law = as_measured(eng, P.g_lrs(set_gate) * np.exp(a.lrs_d2d[idx][None, :] + wl))
        hrs_law = as_measured(eng, P.g_hrs(reset_v) * np.exp(a.hrs_d2d[idx][None, :] + wh))
        # 10 points x healthy cells: the medians of measured / law are 1 to within c2c + read noise
        assert np.median(d["lrs"][:, ok] / lrs_law[:, ok]) == pytest.approx(1.0, abs=0.03)
        assert np.median(d["hrs"][:, ok] / hrs_law[:, ok]) == pytest.approx(1.0, abs=0.12)
        # the last HRS read is the state the chip is left in: compare with its noiseless conductance
        now = as_measured(eng, a.conductance(rows, cols))
        diff = np.abs(d["hrs"][-1] - now)[ok]
        assert np.median(diff) < 1.5 * SIGMA_READ and diff.max() < 6 * SIGMA_READ
        assert out.summary["read_points"] == 10 and out.summary["window_first"] > 5


# ------------------------------------------------------------------------------------------- retention
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retention_programs_within_tolerance_and_reads_the_true_state(transport: str, tmp_path: Path) -> None:
    with open_sim(transport, seed=6) as (board, eng):
        idx, rows, cols, ok = form_region(eng, "0:4,0:8")
        tol = 0.8e-6
        out = run(
            board, "retention", tmp_path / "ret.h5", cells="0:4,0:8", tol=tol, times=4, t_first=1.0, t_last=1000.0
        )
        data = read_run(out.path).data
        prog, reads = data["program"], data["reads"]
        targets = level_targets(4, 5e-6, 35e-6)
        assert np.allclose(prog["target"], targets[prog["level"]])
        within = (prog["status"] == CellResult.CONVERGED) & (np.abs(prog["g"] - prog["target"]) <= tol)
        assert within[ok].mean() > 0.95
        assert np.all(prog["status"][~ok] != CellResult.CONVERGED) or (~ok).sum() == 0
        # reads on the board's clock at the requested times after programming
        assert np.allclose(reads["t"] - prog["t"].max(), log_times(1.0, 1000.0, 4), rtol=1e-3, atol=1e-3)
        # the last read is the chip's true (relaxed) state plus read noise
        now = as_measured(eng, eng.array.conductance(rows, cols))
        diff = np.abs(reads["g"][-1] - now)[ok]
        assert np.median(diff) < 1.5 * SIGMA_READ and diff.max() < 2.5e-6


# ------------------------------------------------------------------------------------------- levels
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_levels_gate_calibration_follows_the_compliance_law(transport: str, tmp_path: Path) -> None:
    with open_sim(transport, seed=7) as (board, eng):
        idx, rows, cols, ok = form_region(eng, "0:4,0:8")
        before = pulses(eng)
        gate_points, cal_cells, tol = 6, 8, 0.8e-6
        out = run(
            board,
            "levels",
            tmp_path / "lv.h5",
            cells="0:4,0:8",
            levels=4,
            read_times="1,10",
            gate_points=gate_points,
            cal_cells=cal_cells,
            gate_lo=0.9,
            gate_hi=1.4,
            tol=tol,
        )
        data = read_run(out.path).data
        cal = data["gate_cal"]
        law = as_measured(eng, P.g_lrs(cal["gate"])[:, None] * np.exp(eng.array.lrs_d2d[idx[:cal_cells]])[None, :])
        good = ok[:cal_cells]
        assert np.median(cal["g"][:, good] / law[:, good]) == pytest.approx(1.0, abs=0.04)
        v = data["verified"]
        within = (v["status"] == CellResult.CONVERGED) & (np.abs(v["g"] - v["target"]) <= tol)
        assert within[ok].mean() > 0.95
        ol = data["open_loop"]
        assert np.std((ol["g"] - ol["target"])[ok]) > np.std((v["g"] - v["target"])[ok])  # verify beats one shot
        assert len(data["open_loop_reads"]) == 2 and len(data["verified_reads"]) == 2
        # pulses: gate calibration (RESET + SET per cell and gate), open loop (RESET + SET per cell), write-verify
        expected = 2 * gate_points * cal_cells + 2 * idx.size + int(v["pulses"].sum())
        spent = pulses(eng) - before
        assert spent[0] == 0 and spent[1] + spent[2] == expected


# ------------------------------------------------------------------------------------------- read noise
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_noise_sigma_matches_the_device_read_noise(transport: str, tmp_path: Path) -> None:
    with open_sim(transport, seed=8) as (board, eng):
        idx, rows, cols, ok = form_region(eng, "0:4,0:8")
        out = run(board, "read-noise", tmp_path / "rn.h5", cells="0:4,0:8", reads=40, levels=4)
        data = read_run(out.path).data
        g = data["reads"]["g"]
        assert g.shape == (40, 32)
        quiet = ok & ~eng.array.rtn_present[idx]  # cells without a telegraph trap: white noise only
        sd = g[:, quiet].std(axis=0, ddof=1)
        assert np.median(sd) == pytest.approx(SIGMA_READ, rel=0.12)
        now = as_measured(eng, eng.array.conductance(rows, cols))
        assert np.median(np.abs(g[:, quiet].mean(axis=0) - now[quiet])) < 3 * SIGMA_READ / np.sqrt(40)
        p = data["program"]
        assert ((p["status"] == CellResult.CONVERGED) & (np.abs(p["g"] - p["target"]) <= 0.8e-6))[ok].mean() > 0.95
        assert out.summary["sigma_median_s"] == pytest.approx(SIGMA_READ, rel=0.25)
