"""`--resume` continues a run only on the board and chip that started it, and refuses any other in one line
before a single pulse (a resume on another simulated chip once joined two chips' data: LRS 26 -> 0.16 uS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hil.characterize import get_procedure
from hil.characterize.identity import RunIdentity, sim_chip
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import RunFileError, read_run
from hil.hardware.board import Board
from sim_backend.chip_store import ChipId
from sim_backend.sim_url import parse_sim_options
from tests.helpers.cli import assert_one_line_error, rram
from tests.helpers.runs import form_run_stopped_after

START = "sim://?seed=0&rows=16&cols=16"
CELLS = "0:1,0:4"


@pytest.fixture
def interrupted(tmp_path: Path) -> Path:
    """A form run over 0:1,0:4 on chip seed 0 that stopped after two of its four cells."""
    with Board.open(START) as board:
        return form_run_stopped_after(board, tmp_path / "run.h5", CELLS, 2)


def _counters(board: Board) -> tuple[int, ...]:
    c = board.link.engine.counters  # type: ignore[attr-defined]
    return (c.form, c.set, c.reset, c.reads)


@pytest.mark.parametrize(
    "other",
    [
        "sim://?seed=1&rows=16&cols=16",  # another chip
        "sim://?seed=0&rows=16&cols=16&board_id=SIM-B2",  # another board
        "sim://?seed=0&rows=8&cols=8",  # another array size
    ],
)
def test_resume_on_another_board_or_chip_is_refused_before_any_pulse(interrupted: Path, other: str) -> None:
    raw = interrupted.read_bytes()
    recorded = read_run(interrupted).identity
    with Board.open(other) as board:
        before = _counters(board)
        cls = get_procedure("form")
        proc = cls(cls.Params(cells=CELLS), board)
        with pytest.raises(RunFileError) as exc:
            run_procedure(proc, interrupted, resume=True, quiet=True)
        assert _counters(board) == before  # not a pulse, not a read
        now = RunIdentity.of(board.describe())
    assert recorded != now
    assert str(exc.value) == (
        f"{interrupted} was recorded on {recorded}; this is {now}: resume on the board and chip that started it, "
        "or start a new run (--force replaces it)"
    )
    assert interrupted.read_bytes() == raw
    assert sorted(p.name for p in interrupted.parent.iterdir()) == ["run.h5"]


def test_the_refusal_names_both_chips_in_one_line_from_the_cli(capsys, monkeypatch, interrupted: Path) -> None:
    other = "sim://?seed=1&rows=16&cols=16"
    r = rram(
        capsys,
        monkeypatch,
        "characterize",
        "form",
        "--port",
        other,
        "--cells",
        CELLS,
        "-o",
        str(interrupted),
        "--resume",
    )
    seed0, seed1 = (ChipId.of(parse_sim_options(u).config).stem for u in (START, other))
    assert seed0.startswith("seed0_16x16_") and seed1.startswith("seed1_16x16_")
    assert_one_line_error(
        r, "was recorded on board SIM-RRAM (16x16, firmware ", f"chip '{seed0}'; this is ", f"chip '{seed1}'"
    )


def test_resume_on_the_same_chip_completes(interrupted: Path) -> None:
    with Board.open(START) as board:
        cls = get_procedure("form")
        run_procedure(cls(cls.Params(cells=CELLS), board), interrupted, resume=True, quiet=True)
    rd = read_run(interrupted)
    assert rd.complete and rd.attrs["resumed"] == 1 and rd.data["form"]["cell"][:, 1].tolist() == [0, 1, 2, 3]
    assert rd.attrs["chip"] == sim_chip(START) and np.all(rd.data["form"]["formed"] == 1)


def test_a_board_without_a_known_chip_is_compared_by_its_board_only() -> None:
    real = {"board_id": "RRAM-0042", "port": "/dev/ttyACM0", "rows": 64, "cols": 64, "firmware": "2.1.0"}
    ident = RunIdentity.of(real)
    assert ident.chip == "" and str(ident) == "board RRAM-0042 (64x64, firmware 2.1.0) (chip not known)"
    assert not ident.differs(RunIdentity.of(dict(real, port="/dev/ttyACM1")))  # same board on another port
    assert ident.differs(RunIdentity.of(dict(real, firmware="2.2.0")))
    assert ident.differs(RunIdentity.of(real, chip="wafer 7 die 3"))  # a known chip never matches an unknown one
    assert sim_chip("sim://?seed=2&rows=4&cols=4&persist=0") == sim_chip("sim://?rows=4&cols=4&seed=2")
    assert sim_chip("sim://?seed=2&rows=4&cols=4") != sim_chip("sim://?seed=2&rows=4&cols=8")
