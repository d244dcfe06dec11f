"""Pulses on the chip = pulses in the run file, across board resets and killed runs (issue 15 item 8).

A glitch is injected where it hurts: the board applies a request, then reboots before its answer leaves, so
the host must redo a step whose pulses the cells already got. The chip's ground truth is the simulator's
lifetime counters (`engine.counters`), compared with what the run file's records and pulse ledger hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from firmware_protocol import Capability, Frame, FrameDecoder, Opcode
from hil.characterize.ledger import LEDGER_TABLE, Cause, Counts, unrecorded
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import read_run
from hil.deploy.placement import build_plan
from hil.deploy.plan import save_plan
from hil.deploy.procedure import DeployRun
from hil.hardware.board import Board
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from sim_backend.link import SimLink
from tests.helpers.boards import form_region, open_sim, run


def _glitch(board: Board, engine: FirmwareEngine, opcode: Opcode, nth: int) -> dict[str, int]:
    """Reboot the board right after it executed the `nth` request with `opcode`, before its answer is sent."""
    link = getattr(board.link, "link", board.link)  # the SimLink behind a sim:// port
    original: Callable[[bytes], int] = link.write  # type: ignore[assignment]
    seen = {"n": 0, "glitches": 0}

    def write(data: bytes) -> int:
        frames = [f for f in FrameDecoder().iter_feed(data) if isinstance(f, Frame)]
        if not seen["glitches"] and frames and frames[0].opcode == opcode:
            seen["n"] += 1
            if seen["n"] == nth:
                seen["glitches"] += 1
                engine.feed(data)  # applied ... and its answer lost with the power glitch
                engine.boot()
                link._deliver(engine.poll())  # type: ignore[attr-defined]
                return len(data)
        return original(data)

    link.write = write  # type: ignore[method-assign]
    return seen


def _chip(engine: FirmwareEngine) -> Counts:
    c = engine.counters
    return Counts(c.form, c.set, c.reset, c.reads)


def test_endurance_cut_by_a_reset_gives_the_cells_exactly_the_cycles_the_file_says(tmp_path: Path) -> None:
    with open_sim("inproc", seed=3, rows=8, cols=8) as (board, engine):
        form_region(engine, "0:4,0:4")
        seen = _glitch(board, engine, Opcode.STREAM_ACK, nth=2)  # the board has run ahead of the host by then
        before = _chip(engine)
        out = run(board, "endurance", tmp_path / "e.h5", cells="0:4,0:4", cycles=3050, read_every=100)
        applied = _chip(engine) - before
    assert seen["glitches"] == 1 and out.summary["board_resets"] == 1
    data = read_run(out.path).data
    n = 16
    # the board cycled every cell of the rectangle: exactly what was asked, not a cycle more
    assert applied.set == applied.reset == 3050 * n
    assert out.summary["cycles"] == 3050
    ledger = data[LEDGER_TABLE]
    cut = ledger[ledger["cause"] == Cause.BOARD_RESET]
    # the stream ran ahead of its last delivered read point before the glitch: those cycles are booked
    assert len(cut) == 1 and cut["set"][0] > 0 and cut["set"][0] % n == 0
    cycles = data["endurance"]["cycle"]
    assert np.all(np.diff(cycles) > 0) and cycles[-1] + unrecorded(ledger, "endurance", len(cycles)).set // n == 3050
    # records after the cut count the cycles the cells really got
    k = int(cut["after"][0])
    assert 0 < k < len(cycles) and cycles[k] == cycles[k - 1] + cut["set"][0] // n + 100
    # a complete stream's cycles after its last read point are booked too
    tail = ledger[ledger["cause"] == Cause.STREAM_TAIL]
    assert tail["set"].sum() == (3050 - cycles[-1]) * n > 0


def test_killed_endurance_resumed_books_the_cycles_the_board_ran_ahead(tmp_path: Path, monkeypatch) -> None:
    from hil.characterize.runfile import RunWriter

    out = tmp_path / "e.h5"
    with open_sim("inproc", seed=4, rows=8, cols=8) as (board, engine):
        form_region(engine, "0:4,0:4")
        before = _chip(engine)
        original = RunWriter.append

        def dies_at_fifth_point(self, name, records=None, **values):
            original(self, name, records, **values)
            if name == "endurance" and self.count("endurance") == 5:
                raise KeyboardInterrupt

        monkeypatch.setattr(RunWriter, "append", dies_at_fifth_point)
        with pytest.raises(KeyboardInterrupt):
            run(board, "endurance", out, cells="0:4,0:4", cycles=1500, read_every=100)
        monkeypatch.setattr(RunWriter, "append", original)
        from hil.characterize import get_procedure

        cls = get_procedure("endurance")
        proc = cls(cls.Params(cells="0:4,0:4", cycles=1500, read_every=100), board)
        outcome = run_procedure(proc, out, resume=True, quiet=True)
        applied = _chip(engine) - before
    assert applied.set == applied.reset == 1500 * 16
    assert outcome.summary["cycles"] == 1500
    ledger = read_run(out).data[LEDGER_TABLE]
    assert Cause.INTERRUPTED in ledger["cause"]


def _recorded_pulses(data: dict, cal_cells_per_gate: int) -> int:
    """SET + RESET pulses the records of a multi-level or deployment run account for."""
    total = 2 * cal_cells_per_gate * len(data["gate_cal"])  # a full RESET and one SET per cell and gate
    for table in ("open_loop", "verified", "tiles"):
        if table in data:
            total += int(data[table]["pulses"].sum())
    return total


def test_levels_with_a_reset_inside_a_write_verify_batch_books_the_lost_pulses(tmp_path: Path) -> None:
    with open_sim("inproc", seed=5, rows=8, cols=8) as (board, engine):
        form_region(engine, "0:4,0:4")
        seen = _glitch(board, engine, Opcode.WRITE_VERIFY, nth=1)
        before = _chip(engine)
        out = run(board, "levels", tmp_path / "l.h5", cells="0:4,0:4", levels=4, read_times="1", gate_points=4)
        applied = _chip(engine) - before
    assert seen["glitches"] == 1 and out.summary["board_resets"] == 1
    data = read_run(out.path).data
    lost = unrecorded(data[LEDGER_TABLE], "open_loop") + unrecorded(data[LEDGER_TABLE], "open_loop_reads")
    assert lost.set + lost.reset > 0  # the glitched batch had pulsed
    k = data["gate_cal"]["g"].shape[1]
    booked = sum((unrecorded(data[LEDGER_TABLE], t) for t in data), Counts())
    assert applied.form == 0
    assert applied.set + applied.reset == _recorded_pulses(data, k) + booked.set + booked.reset


def test_one_shot_programming_cut_by_a_reset_books_its_pulse_pair(tmp_path: Path) -> None:
    with open_sim("inproc", seed=6, rows=8, cols=8) as (board, engine):
        form_region(engine, "0:4,0:4")
        seen = _glitch(board, engine, Opcode.SET, nth=4 * 4 + 3)  # after the calibration's 4 x 4, in open loop
        before = _chip(engine)
        out = run(
            board, "levels", tmp_path / "l.h5", cells="0:4,0:4", levels=4, read_times="1", gate_points=4, cal_cells=4
        )
        applied = _chip(engine) - before
    assert seen["glitches"] == 1
    data = read_run(out.path).data
    booked = sum((unrecorded(data[LEDGER_TABLE], t) for t in data), Counts())
    assert booked.set == 1 and booked.reset == 1  # the RESET + SET pair of the cell whose record was lost
    k = data["gate_cal"]["g"].shape[1]
    assert applied.set + applied.reset == _recorded_pulses(data, k) + booked.set + booked.reset


def test_deployment_cut_by_a_reset_books_what_the_tile_had_applied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    mask = {"0": torch.rand(4, 6) < 0.5}
    plan = build_plan(model, 2e-6, 40e-6, {k: v for k, v in mask.items()}, rows=4, cols=4)
    plan_path = save_plan(plan, tmp_path / "plan.h5")
    with open_sim("inproc", seed=7, rows=4, cols=4) as (board, engine):
        seen = _glitch(board, engine, Opcode.READ_BLOCK, nth=2)  # the read-back of the first tile
        before = _chip(engine)
        proc = DeployRun(DeployRun.Params(plan=str(plan_path), read_delay=0.0), board)
        outcome = run_procedure(proc, tmp_path / "d.h5", quiet=True)
        applied = _chip(engine) - before
    assert seen["glitches"] == 1 and outcome.summary["board_resets"] == 1
    data = read_run(tmp_path / "d.h5").data
    booked = sum((unrecorded(data[LEDGER_TABLE], t) for t in data), Counts())
    assert booked.set + booked.reset > 0
    k = data["gate_cal"]["g"].shape[1]
    assert applied.form == int(data["form"]["pulses"].sum()) + booked.form
    assert applied.set + applied.reset == _recorded_pulses(data, k) + booked.set + booked.reset


def test_a_board_without_lifetime_counters_marks_the_gap_as_unknown(tmp_path: Path, caplog) -> None:
    caps = BoardConfig().capabilities & ~Capability.LIFETIME_COUNTERS
    engine = FirmwareEngine(BoardConfig(rows=8, cols=8, seed=8, capabilities=caps))
    form_region(engine, "0:4,0:4")
    with Board(SimLink(engine), port="sim-test") as board:
        _glitch(board, engine, Opcode.STREAM_ACK, nth=2)
        with caplog.at_level(logging.WARNING):
            out = run(board, "endurance", tmp_path / "e.h5", cells="0:4,0:4", cycles=1000, read_every=100)
    ledger = read_run(out.path).data[LEDGER_TABLE]
    gap = ledger[ledger["cause"] == Cause.BOARD_RESET]
    assert len(gap) == 1 and gap["set"][0] == -1
    assert "no lifetime counters" in caplog.text
