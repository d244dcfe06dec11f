"""Board operations (hil.hardware.board) on the board at --board-port (default: the simulated board), checked
with what holds on a real chip too: limits refused without a pulse, reads that agree, SET above RESET.

Uses cells 4:6,0:4, apart from the region of test_procedures_with_board.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from firmware_protocol import LimitError
from hil.hardware.board import Board

pytestmark = pytest.mark.board

ROW0, NROWS, COL0, NCOLS = 4, 2, 0, 4
CELLS = [(r, c) for r in range(ROW0, ROW0 + NROWS) for c in range(COL0, COL0 + NCOLS)]
G_FORMED = 5e-6  # S


@pytest.fixture(scope="module")
def board(board_port: str) -> Iterator[Board]:
    with Board.open(board_port) as b:
        yield b


@pytest.fixture(scope="module")
def formed(board: Board) -> list[tuple[int, int]]:
    """The cells of CELLS that form (already formed ones count): at least half of them."""
    ok = [(r, c) for r, c in CELLS if board.form(r, c, g_formed=G_FORMED, v_gate=1.0).formed]
    assert len(ok) >= len(CELLS) // 2, f"only {len(ok)} of {len(CELLS)} cells formed"
    return ok


def _pulses(board: Board) -> tuple[int, int, int]:
    c = board.counters()
    return c.form_pulses, c.set_pulses, c.reset_pulses


def test_out_of_range_requests_are_refused_without_a_pulse(board: Board) -> None:
    lim = board.describe()
    before = _pulses(board)
    with pytest.raises(LimitError, match="SET voltage"):
        board.set_pulse(ROW0, COL0, lim["set_v"][1] + 1.0, 200, 1.0)
    with pytest.raises(LimitError, match="read voltage"):
        board.read(ROW0, COL0, lim["read_v"][1] + 0.5)
    with pytest.raises(LimitError):
        board.reset_pulse(ROW0, COL0, lim["reset_v"][0] - 1.0, 200)
    assert _pulses(board) == before


def test_board_clock_runs_forward(board: Board) -> None:
    t = [board.read(ROW0, COL0).timestamp_s for _ in range(3)]
    assert np.all(np.diff(t) >= 0)
    assert board.heartbeat().session_id == board.session_id


def test_set_conducts_more_than_reset(board: Board, formed: list[tuple[int, int]]) -> None:
    window = []
    for r, c in formed:
        board.reset_pulse(r, c, -1.5, 200, 3.0)
        g_hrs = board.read(r, c).conductance_s
        board.set_pulse(r, c, 1.5, 200, 1.1)
        g_lrs = board.read(r, c).conductance_s
        window.append(g_lrs / max(g_hrs, 1e-9))
    assert np.mean(np.array(window) > 2) >= 0.8, window  # a switching window on most formed cells


def test_block_read_agrees_with_single_reads(board: Board, formed: list[tuple[int, int]]) -> None:
    for r, c in formed:
        board.set_pulse(r, c, 1.5, 200, 1.1)  # conducting cells: reads well above the noise floor
    block = board.read_block(ROW0, COL0, NROWS, NCOLS).conductance_s
    single = np.array(
        [[board.read(r, c).conductance_s for c in range(COL0, COL0 + NCOLS)] for r in range(ROW0, ROW0 + NROWS)]
    )
    on = np.array([[(r, c) in formed for c in range(COL0, COL0 + NCOLS)] for r in range(ROW0, ROW0 + NROWS)])
    assert block.shape == (NROWS, NCOLS)
    assert np.median(np.abs(block[on] / single[on] - 1)) < 0.1  # the same cells, within read noise
    assert np.all(block[on] > G_FORMED)
