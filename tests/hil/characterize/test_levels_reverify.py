"""`levels` write-verifies as `rram program` deploys (program-settle-verify), so the profile's verified law and its
pulses per device are what a deployment with the same settings gets; `--reverify 0` writes today's records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firmware_protocol import CellResult
from firmware_protocol.progress import Progress
from hil.characterize import get_procedure
from hil.characterize.formed import FormedCheck
from hil.characterize.levels import Levels, LevelsParams
from hil.characterize.multilevel import (
    DEFAULT_RAMP,
    RESET_GATE,
    RESET_V,
    RESET_WIDTH_NS,
    REVERIFY,
    SETTLE_S,
    program_table,
    reverify_table,
)
from hil.characterize.procedure import param_specs, run_procedure
from hil.characterize.region import Region
from hil.characterize.runfile import RunWriter, read_run
from hil.deploy.procedure import DeployParams
from hil.hardware.board import BlockMeasurement, Board, PulseRamp, WriteVerifyOutcome
from hil.pipeline.run_datasets import collect_datasets, fit_runs
from tests.helpers.boards import form_region

URL = "sim://?seed=5&rows=8&cols=8&persist=0"  # a pristine copy of the same chip for every run
CELLS = "0:4,0:4"  # 16 cells: one write-verify batch
SMALL: dict[str, Any] = dict(cells=CELLS, levels=4, read_times="1,10", gate_points=3, cal_cells=4)
TOL = LevelsParams().tol
TABLES = ("gate_cal", "open_loop", "open_loop_reads", "verified", "verified_reads")


def _levels(out: Path, **kw: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """A levels run on a fresh copy of the chip, its region formed directly on the chip first (set-up)."""
    with Board.open(URL) as board:
        form_region(board.link.engine, CELLS)  # type: ignore[attr-defined]
        outcome = run_procedure(Levels(LevelsParams(**{**SMALL, **kw}), board), out, quiet=True)
    data = read_run(out).data
    return outcome.summary, {k: data[k] for k in TABLES}


def _program_verified_before_reverify(
    board: Board,
    w: RunWriter,
    table: str,
    region: Region,
    levels: np.ndarray,
    targets: np.ndarray,
    tol: float,
    max_pulses: int,
    v_read: float,
    bar: Progress,
    batch: int = 256,
    ramp: PulseRamp = DEFAULT_RAMP,
    check: FormedCheck | None = None,
    settle_verify: Any = None,
) -> None:
    """multilevel.program_verified as it was before program-settle-verify (commit 2fc528a), verbatim but for the
    record's dtype (today's table has the touch-up fields, left 0): the reference for reverify=0."""
    rows, cols = region.cells()
    use = np.ones(rows.size, dtype=bool) if check is None else check.formed
    done = w.count(table)
    for i in range(done, rows.size, batch):
        sl = slice(i, min(i + batch, rows.size))
        rec = np.zeros(sl.stop - sl.start, dtype=reverify_table("").dtype)
        rec["cell"] = np.stack([rows[sl], cols[sl]], axis=1)
        rec["level"], rec["target"] = levels[sl], targets[levels[sl]]
        on = use[sl]
        if check is not None:
            rec["g"][~on], rec["status"][~on], rec["t"] = check.g[sl][~on], CellResult.NOT_FORMED, check.t
        if on.any():
            r, c = rows[sl][on], cols[sl][on]
            o = board.write_verify(r, c, targets[levels[sl][on]], tol, max_pulses, ramp, v_read)
            rec["g"][on], rec["pulses"][on], rec["status"][on], rec["t"] = o.final_s, o.pulses, o.status, o.timestamp_s
        w.append(table, rec)
        bar.advance(sl.stop - sl.start)


def test_reverify_0_writes_the_records_of_write_verify_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now_summary, now = _levels(tmp_path / "now.h5", reverify=0, settle=5.0)  # settle is inert without rounds
    with monkeypatch.context() as m:
        m.setattr("hil.characterize.levels.program_verified", _program_verified_before_reverify)
        before_summary, before = _levels(tmp_path / "before.h5", reverify=0, settle=5.0)
    for name in TABLES:  # every record, every field, bit for bit (the same chip, the same pulses, the same clock)
        assert now[name].tobytes() == before[name].tobytes(), name
    assert not now["verified"]["touchups"].any() and not now["verified"]["pulses_touchup"].any()
    assert now_summary == before_summary and now_summary["verified"]["touchups_mean"] == 0.0
    # the write-verify-once layout itself (retention, read-noise) is unchanged: today's program table
    assert set(reverify_table("").dtype.names or ()) - set(program_table("").dtype.names or ()) == {
        "touchups",
        "pulses_touchup",
    }


class _Spy:
    """The write-verifies, waits and block reads a run makes, in order; the first settle RESETs one cell to HRS."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, drift_cell: tuple[int, int]) -> None:
        self.calls: list[tuple[str, Any]] = []
        wv, wait, block = Board.write_verify, Board.wait, Board.read_block

        def write_verify(board: Board, rows: Any, cols: Any, targets: Any, *a: Any, **k: Any) -> WriteVerifyOutcome:
            o = wv(board, rows, cols, targets, *a, **k)
            self.calls.append(("wv", (np.asarray(rows) * 8 + np.asarray(cols), np.asarray(targets), o)))
            return o

        def waited(board: Board, seconds: float) -> None:
            wait(board, seconds)
            first = not any(k == "wait" for k, _ in self._after_first_wv())
            self.calls.append(("wait", seconds))
            if first and any(k == "wv" for k, _ in self.calls):  # the first settle after write-verify
                board.reset_pulse(*drift_cell, RESET_V, RESET_WIDTH_NS, RESET_GATE)

        def read_block(board: Board, r0: int, c0: int, nr: int, nc: int, *a: Any, **k: Any) -> BlockMeasurement:
            m = block(board, r0, c0, nr, nc, *a, **k)
            self.calls.append(("read", (r0, c0, m)))
            return m

        monkeypatch.setattr(Board, "write_verify", write_verify)
        monkeypatch.setattr(Board, "wait", waited)
        monkeypatch.setattr(Board, "read_block", read_block)

    def _after_first_wv(self) -> list[tuple[str, Any]]:
        kinds = [k for k, _ in self.calls]
        return self.calls[kinds.index("wv") :] if "wv" in kinds else []


def test_a_drifted_cell_is_touched_up_and_counted_as_the_deployment_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drift = (1, 2)  # the cell the first settle RESETs: far below any target, so it must be touched up
    spy = _Spy(monkeypatch, drift)
    summary, d = _levels(tmp_path / "l.h5", reverify=2, settle=1.0)
    monkeypatch.undo()
    phase = spy._after_first_wv()
    kinds = [k for k, _ in phase]
    # per round: settle, read the batch, write-verify the converged cells out of tolerance; then the timed reads
    assert kinds[:4] == ["wv", "wait", "read", "wv"] and kinds.count("wv") in (2, 3), kinds
    cells, _, o = phase[0][1]
    assert np.array_equal(cells, np.arange(16) // 4 * 8 + np.arange(16) % 4)  # the 4x4 region row-major
    rec = d["verified"]
    i = drift[0] * 4 + drift[1]
    assert o.status[i] == CellResult.CONVERGED  # a healthy cell, write-verified before it "drifted"
    status, g_last, pulses = np.array(o.status), np.array(o.final_s), np.array(o.pulses)
    touch_pulses, touches, t_last = np.zeros(16, int), np.zeros(16, int), np.full(16, o.timestamp_s)
    k = 1
    while k + 2 < len(phase) and kinds[k : k + 3] == ["wait", "read", "wv"]:
        assert phase[k][1] == SETTLE_S
        r0, c0, m = phase[k + 1][1]
        assert (r0, c0) == (0, 0) and m.conductance_s.shape == (4, 4)  # one READ_BLOCK over the batch's rectangle
        g_now = m.conductance_s.ravel()
        out = np.flatnonzero((status == CellResult.CONVERGED) & (np.abs(g_now - rec["target"]) > TOL))
        again, tg, o2 = phase[k + 2][1]
        assert np.array_equal(again, cells[out]) and np.array_equal(tg, rec["target"][out])
        status[out], g_last[out], t_last[out] = o2.status, o2.final_s, o2.timestamp_s
        pulses[out] += o2.pulses
        touch_pulses[out] += o2.pulses
        touches[out] += 1
        k += 3
    assert (k - 1) // 3 >= 1  # at least the drifted cell's round
    if (k - 1) // 3 < REVERIFY:  # the rounds ended early: the next check found every converged cell in tolerance
        assert kinds[k : k + 2] == ["wait", "read"]
        g_now = phase[k + 1][1][2].conductance_s.ravel()
        assert not np.any((status == CellResult.CONVERGED) & (np.abs(g_now - rec["target"]) > TOL))
    assert touches[i] >= 1  # the drifted cell came back
    assert np.array_equal(rec["pulses"], pulses) and np.array_equal(rec["pulses_touchup"], touch_pulses)
    assert np.array_equal(rec["touchups"], touches) and np.array_equal(rec["status"], status)
    assert np.array_equal(rec["g"], g_last) and np.array_equal(rec["t"], t_last)
    # the timed reads count from the last write of any cell: "seconds after programming"
    np.testing.assert_allclose(d["verified_reads"]["t"] - rec["t"].max(), [1.0, 10.0], atol=0.01)
    ok = rec["status"] == CellResult.CONVERGED
    v = summary["verified"]
    assert v["touchups_mean"] == pytest.approx(touches[ok].mean())
    assert v["pulses_mean"] == pytest.approx(pulses[ok].mean())
    assert v["touchup_pulses_mean"] == pytest.approx(touch_pulses[ok].mean())


def test_settle_and_reverify_are_the_deployments_parameters() -> None:
    """The same names, help, units, ranges and defaults as `rram program`'s (one declaration)."""
    lv, dp = param_specs(LevelsParams), param_specs(DeployParams)
    for name in ("settle", "reverify", "max_pulses"):
        assert lv[name] == dp[name], name
    assert (lv["tol"].unit, lv["tol"].min, lv["tol"].min_open) == (dp["tol"].unit, dp["tol"].min, dp["tol"].min_open)
    p, q = LevelsParams(), DeployParams()
    assert (p.settle, p.reverify, p.tol, p.max_pulses) == (q.settle, q.reverify, q.tol, q.max_pulses)
    assert (p.settle, p.reverify) == (SETTLE_S, REVERIFY) == (1.0, 2)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"reverify": 1.5}, "levels needs a whole number of re-verify rounds (--reverify), got 1.5"),
        ({"reverify": -1}, "levels needs 0 <= --reverify <= 255 (got -1)"),
        ({"settle": -1.0}, "levels needs --settle >= 0 s (got -1.0)"),
    ],
)
def test_bad_settle_and_reverify_are_refused_in_one_line(kw: dict, msg: str) -> None:
    with Board.open(URL) as board:
        with pytest.raises(ValueError) as err:
            Levels(LevelsParams(**{**SMALL, **kw}), board)
    assert str(err.value) == msg


def test_the_verified_dataset_and_law_carry_the_runs_settings(tmp_path: Path) -> None:
    _levels(tmp_path / "l.h5", reverify=2, settle=1.0)
    run = read_run(tmp_path / "l.h5")
    ds = collect_datasets([run]).verified
    assert ds is not None and (ds.reverify_rounds, ds.settle_s, ds.tol_s) == (2, 1.0, TOL)
    v = run.data["verified"]
    ok = v["status"] == CellResult.CONVERGED
    assert ds.touchups is not None and ds.touchup_pulses is not None
    assert np.array_equal(ds.touchups, v["touchups"][ok]) and np.array_equal(ds.touchup_pulses, v["pulses_touchup"][ok])
    prof, _ = fit_runs([tmp_path / "l.h5"])
    law = prof.verified
    assert law is not None and law.reverify is not None
    assert (law.reverify_rounds, law.settle_s, law.reverify.tol_s) == (2, 1.0, TOL)
    # per device over every healthy cell, as pulses_mean (which holds the touch-ups' pulses too)
    assert law.touchups_mean == pytest.approx(v["touchups"][ok].mean(), rel=1e-12)
    assert law.touchup_pulses_mean == pytest.approx(v["pulses_touchup"][ok].mean(), rel=1e-12)
    assert law.pulses_mean == pytest.approx(v["pulses"][ok].mean(), rel=1e-12)


def test_a_run_file_from_before_reverify_still_fits_as_write_verify_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A levels run in the layout from before (no touch-up fields, no settle / reverify params) fits: 0 rounds."""
    old_tables = Levels.tables

    def tables(self: Levels) -> dict:
        t = old_tables(self)
        t["verified"] = program_table("on-board write-verify to the same targets")
        return t

    with monkeypatch.context() as m:
        m.setattr(Levels, "tables", tables)
        m.setattr("hil.characterize.levels.SettleVerify", lambda *a: None)  # write-verify once, old layout
        _levels(tmp_path / "old.h5", reverify=0)
    run = read_run(tmp_path / "old.h5")
    assert "touchups" not in (run.data["verified"].dtype.names or ())
    del run.params["reverify"], run.params["settle"]  # what a run file from before records
    ds = collect_datasets([run]).verified
    assert ds is not None and ds.reverify_rounds == 0 and ds.touchups is None
    prof, _ = fit_runs([tmp_path / "old.h5"])
    assert prof.verified is not None and prof.verified.reverify is None and prof.verified.reverify_rounds == 0
    assert prof.verified.touchups_mean == 0.0 and prof.verified.settle_s == 0.0
    # and it pools with a run measured the same way, not with one that re-verified
    _levels(tmp_path / "rv.h5", reverify=1, read_times="1,10")
    with pytest.raises(ValueError, match="different re-verify settings"):
        collect_datasets([run, read_run(tmp_path / "rv.h5")])


def test_the_levels_procedure_is_registered_with_the_new_table() -> None:
    cls = get_procedure("levels")
    assert cls is Levels and "touchups" in (reverify_table("").dtype.names or ())


def test_a_run_stopped_after_its_touch_ups_resumes_and_reads_from_their_last_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted before the reads after write-verify: the resumed run keeps the touch-up records as they were
    and reads at least `read_times` after the last write of any cell (the board clock went on meanwhile)."""
    import hil.characterize.levels as levels_mod

    out, url = tmp_path / "l.h5", "sim://?seed=5&rows=8&cols=8"  # persists within this test: resume on the same chip
    real = levels_mod.timed_reads

    def cut(board: Board, w: RunWriter, table: str, *a: Any, **k: Any) -> None:
        if table == "verified_reads":
            raise KeyboardInterrupt  # as a Ctrl-C between the verified records and the reads after them
        real(board, w, table, *a, **k)

    params = LevelsParams(**{**SMALL, "reverify": 2})
    with Board.open(url) as board:
        form_region(board.link.engine, CELLS)  # type: ignore[attr-defined]
        with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
            m.setattr(levels_mod, "timed_reads", cut)
            run_procedure(Levels(params, board), out, quiet=True)
    stopped = read_run(out)
    assert stopped.status != "complete" and len(stopped.data["verified_reads"]) == 0
    kept = stopped.data["verified"].copy()
    assert kept["touchups"].any()  # the default rounds touched cells up
    with Board.open(url) as board:
        outcome = run_procedure(Levels(params, board), out, quiet=True, resume=True)
    done = read_run(out)
    assert done.complete and done.data["verified"].tobytes() == kept.tobytes()
    reads = done.data["verified_reads"]["t"]
    assert len(reads) == 2 and np.all(reads - kept["t"].max() >= np.array([1.0, 10.0]) - 1e-9)
    healthy = kept["status"] == CellResult.CONVERGED
    assert outcome.summary["verified"]["touchups_mean"] == pytest.approx(kept["touchups"][healthy].mean())
