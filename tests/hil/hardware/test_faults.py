"""Procedures over a faulty link (0.5 % corrupted bytes, random delays) and through a board reset mid-run:
they complete, and the board's own pulse counters show not one duplicated or lost pulse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hil.characterize.runfile import read_run
from sim_backend.faults import LinkFaults
from tests.conftest import FIRMWARES
from tests.helpers.boards import form_region, open_sim, pulses, run

# 0.5 % of bytes flipped: a 32-cell write-verify request (490 bytes) is damaged with p = 1 - 0.995^490 = 91 %, a
# one-cell one (56 bytes) with 24 %, so the host must shrink its batches. Measured on the pty over 12 fault seeds,
# the levels run needs ~200-300 retries (NAKs, damaged answers, timeouts) and ends with write-verify batches of 1-3
# cells and block reads of <= 16; over 8 seeds the endurance run needs 8-19 event resends. At 1 % the same checks
# took ~45 s per levels run instead of ~9 s (every damaged answer costs a 20 ms wait and a resend).
NOISY = LinkFaults(flip=0.005, delay=0.2, delay_max_s=0.02, seed=3)


def board_counters(board: object) -> np.ndarray:
    """FORM, SET, RESET counts as the board reports them (GET_COUNTERS, through the noisy link)."""
    c = board.counters()  # type: ignore[attr-defined]
    return np.array([c.form_pulses, c.set_pulses, c.reset_pulses])


@pytest.mark.parametrize(
    "transport, firmware", [("inproc", "python"), ("pty", "python"), ("inproc", "c")], indirect=["firmware"]
)
def test_endurance_over_a_noisy_link_applies_every_cycle_exactly_once(
    transport: str, firmware: str, tmp_path: Path
) -> None:
    with open_sim(transport, seed=11, faults=NOISY) as (board, eng):
        _, _, _, ok = form_region(eng, "0:2,0:4")
        before = board_counters(board)
        cycles, every = 100, 10
        out = run(
            board,
            "endurance",
            tmp_path / "end.h5",
            cells="0:2,0:4",
            cycles=cycles,
            read_every=every,
            cells_per_event=2,
            skip_unformed=True,  # a cell that cannot form is left out of the summary; the stream still cycles all 8
        )
        d = read_run(out.path).data["endurance"]
        assert np.array_equal(d["cycle"], np.arange(every, cycles + 1, every))
        assert np.all(d["lrs"][:, ok] > 4 * d["hrs"][:, ok])  # no garbled or misplaced values slipped through
        spent = board_counters(board) - before
        assert np.array_equal(spent, [0, cycles * 8, cycles * 8])
        assert np.array_equal(board_counters(board), pulses(eng))  # GET_COUNTERS is the engine's truth
        s = board.stats
        assert s.corrupt_frames + s.naks > 10 and s.resends > 0  # the link really was noisy


@pytest.mark.parametrize("transport", ["inproc", pytest.param("pty", marks=pytest.mark.slow)])
def test_levels_over_a_noisy_link_records_every_pulse_it_spends(transport: str, tmp_path: Path) -> None:
    with open_sim(transport, seed=12, faults=NOISY) as (board, eng):
        _, _, _, ok = form_region(eng, "0:4,0:8")
        before = pulses(eng)
        gate_points, cal_cells = 4, 4
        out = run(
            board,
            "levels",
            tmp_path / "lv.h5",
            cells="0:4,0:8",
            levels=4,
            read_times="1,10",
            gate_points=gate_points,
            cal_cells=cal_cells,
        )
        data = read_run(out.path).data
        v = data["verified"]
        expected = 2 * gate_points * cal_cells + 2 * 32 + int(v["pulses"].sum())
        spent = pulses(eng) - before
        assert spent[0] == 0 and spent[1] + spent[2] == expected
        within = np.abs(v["g"] - v["target"]) <= 0.8e-6
        assert within[ok].mean() > 0.95
        assert [len(data[t]) for t in ("gate_cal", "open_loop", "open_loop_reads", "verified", "verified_reads")] == [
            4,
            32,
            2,
            32,
            2,
        ]
        # the board shrank its bulk transfers to what the link lets through
        assert board._wv.size < 32 and board._block.size < 32
        assert board.stats.retries > 20


# ------------------------------------------------------------------------------------------- board reset
@pytest.mark.parametrize(
    "name, params, reset_after",
    [
        ("endurance", dict(cells="0:4,0:4", cycles=400, read_every=20, cells_per_event=4), 150),
        ("levels", dict(cells="0:4,0:4", levels=4, read_times="1,10", gate_points=4, cal_cells=4), 1300),
        ("read-noise", dict(cells="0:4,0:4", reads=30, levels=4), 700),
        ("retention", dict(cells="0:4,0:4", times=5, t_last=100.0), 300),
        ("form", dict(cells="4:5,0:16", v_start=2.4), 300),
    ],
)
@pytest.mark.parametrize("firmware", FIRMWARES, indirect=True)
def test_procedure_survives_a_board_reset_mid_run(
    name: str, params: dict, reset_after: int, firmware: str, tmp_path: Path
) -> None:
    with open_sim("inproc", seed=13, faults=LinkFaults(reset_after=reset_after)) as (board, eng):
        form_region(eng, "0:4,0:16")
        session = board.session_id
        out = run(board, name, tmp_path / "run.h5", **params)
        assert out.resets == 1 and out.summary["board_resets"] == 1
        assert board.session_id != session and eng._boots == 2
        rd = read_run(out.path)
        assert rd.complete
        d = rd.data
        if name == "endurance":
            assert np.array_equal(d["endurance"]["cycle"], np.arange(20, 401, 20))
            assert pulses(eng)[1] >= 400 * 16  # cycles of the interrupted stream are spent, never skipped
        elif name == "levels":
            assert [len(d[t]) for t in ("gate_cal", "open_loop", "open_loop_reads", "verified", "verified_reads")] == [
                4,
                16,
                2,
                16,
                2,
            ]
        elif name == "read-noise":
            assert len(d["program"]) == 16 and len(d["reads"]) == 30
        elif name == "retention":
            assert len(d["program"]) == 16 and len(d["reads"]) == 5
            assert np.all(np.diff(d["reads"]["t"]) > 0)
        else:
            assert np.array_equal(d["form"]["cell"][:, 1], np.arange(16))  # each cell exactly once, in order
