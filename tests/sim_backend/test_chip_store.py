"""A simulated chip is a chip: its state persists between sessions and processes, atomically and under a lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from hil.hardware.board import Board
from hil.hardware.transport import BoardConnectionError
from sim_backend import chip_store
from sim_backend.board_config import BoardConfig
from sim_backend.chip_store import ChipId, ChipStore, ChipStoreError, PersistentChip, default_state_dir
from sim_backend.device_params import DeviceParams
from sim_backend.firmware import FirmwareEngine
from sim_backend.sim_url import parse_sim_options

REPO = Path(__file__).resolve().parents[2]
URL = "sim://?seed=3&rows=8&cols=8"
CHIP = ChipId.of(BoardConfig(rows=8, cols=8, seed=3))


def engine_of(board: Board) -> FirmwareEngine:
    return cast(FirmwareEngine, board.link.engine)  # type: ignore[attr-defined]


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if key not in skip:
            assert np.array_equal(a[key], b[key]), key


def form_row(board: Board, row: int = 0) -> int:
    return sum(board.form(row, c, v_gate=1.0).formed for c in range(board.cols))


def python(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python subprocess in the repository (it inherits this test's RRAM_SIM_STATE_DIR)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(predicate, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]  # a hang guard only: generous under load
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ------------------------------------------------------------------------------ between sessions
def test_formed_cells_clock_and_counters_persist_between_sessions(sim_state_dir: Path) -> None:
    with Board.open(URL) as board:
        formed = form_row(board)
        board.advance_clock(5.0)
        engine = engine_of(board)
        before = engine.export_state()
        g_before = engine.array.conductance(np.zeros(8, int), np.arange(8))
        clock_before, session_before = engine.array.time_s, board.session_id
    assert formed > 0 and ChipStore().path(CHIP).exists()
    with Board.open(URL) as board:
        engine = engine_of(board)
        after = engine.export_state()
        assert_same_state(before, after, skip=("boots",))
        assert int(after["boots"]) == int(before["boots"]) + 1  # a power cycle: the firmware booted again
        assert board.session_id != session_before
        assert int(engine.array.formed[:8].sum()) == formed
        assert np.array_equal(engine.array.conductance(np.zeros(8, int), np.arange(8)), g_before)
        # the virtual clock continues where it stopped (the board reports microseconds)
        assert board.advance_clock(1.0) == pytest.approx(clock_before + 1.0, abs=1e-6)


def test_throwaway_chip_is_pristine_every_time_and_never_saved(sim_state_dir: Path) -> None:
    with Board.open(URL) as board:
        form_row(board)
    for _ in range(2):
        with Board.open(URL + "&persist=0") as board:
            assert not engine_of(board).array.formed.any()
            form_row(board, row=1)
    assert [p.name for p in sim_state_dir.iterdir() if p.suffix == ".npz"] == [ChipStore().path(CHIP).name]
    with Board.open(URL) as board:  # the stored chip saw none of the throwaway work
        assert engine_of(board).array.formed[:8].any() and not engine_of(board).array.formed[8:16].any()


def test_state_dir_option_and_environment(tmp_path: Path, sim_state_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "chips"
    with Board.open(f"{URL}&state_dir={folder}") as board:
        form_row(board)
    assert ChipStore(folder).path(CHIP).exists() and not ChipStore().path(CHIP).exists()
    assert default_state_dir() == sim_state_dir
    monkeypatch.delenv("RRAM_SIM_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "rram-hil" / "sim"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "rram-hil" / "sim"


@pytest.mark.parametrize(
    "url, message",
    [
        (URL + "&persist=maybe", "persist='maybe' is not 0 or 1"),
        (URL + "&state_dir=", "state_dir is empty"),
        (URL + "&persit=0", "known: board_id, cols, delay"),
    ],
)
def test_bad_persistence_options_are_one_line_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sim_options(url)
    with pytest.raises(BoardConnectionError, match=message) as err:
        Board.open(url)
    assert "\n" not in str(err.value)


def test_unusable_state_folder_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(BoardConnectionError, match="cannot create the simulated-chip folder .*persist=0") as err:
        Board.open(f"{URL}&state_dir={blocker / 'chips'}")
    assert "\n" not in str(err.value)
    with Board.open(f"{URL}&state_dir={blocker / 'chips'}&persist=0"):  # a throwaway chip needs no folder
        pass


def test_url_persistence_values() -> None:
    assert parse_sim_options(URL).persist and parse_sim_options(URL).state_dir is None
    assert not parse_sim_options(URL + "&persist=off").persist
    assert parse_sim_options(URL + "&persist=1&state_dir=/tmp/x").state_dir == "/tmp/x"


def test_changed_physics_is_another_chip(sim_state_dir: Path) -> None:
    with Board.open(URL) as board:
        form_row(board)
    other = DeviceParams(v_form_mean=3.2)
    engine = FirmwareEngine(BoardConfig(rows=8, cols=8, seed=3, device=other))
    chip = PersistentChip.open(engine, ChipStore())
    try:
        assert not chip.loaded and not engine.array.formed.any()
        assert chip.chip.name == CHIP.name and chip.chip.physics != CHIP.physics
    finally:
        chip.close()


# ------------------------------------------------------------------------------ when it saves
def test_many_small_requests_are_saved_at_most_every_interval(sim_state_dir: Path) -> None:
    t0 = time.monotonic()
    with Board.open(URL) as board:
        form_row(board)
        for _ in range(150):
            board.read(0, 0)
        final = engine_of(board).export_state()
    elapsed = time.monotonic() - t0
    stored = ChipStore().load(CHIP)
    assert stored is not None
    # 158 changing requests; the saver wakes every SAVE_INTERVAL_S at the earliest, plus one save at close
    assert 1 <= stored.generation <= elapsed / chip_store.SAVE_INTERVAL_S + 1
    assert_same_state(stored.state, final)  # the save at close holds the last request


def test_unchanged_chip_writes_no_file(sim_state_dir: Path) -> None:
    with Board.open(URL) as board:
        board.heartbeat()
    assert not ChipStore().path(CHIP).exists()


def test_failed_write_leaves_the_previous_state(sim_state_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = FirmwareEngine(BoardConfig(rows=8, cols=8, seed=3))
    chip = PersistentChip.open(engine, ChipStore(), interval_s=3600)
    try:
        engine.array.form(np.array([0]), np.array([0]), 4.0, 1000, 1.0)
        engine.counters.form += 1
        assert chip.save()
        first = ChipStore().load(CHIP)
        engine.array.form(np.array([1]), np.array([1]), 4.0, 1000, 1.0)
        engine.counters.form += 1
        calls = {"n": 0}
        real = np.lib.format.write_array

        def dies_midway(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 4:
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)

        monkeypatch.setattr(np.lib.format, "write_array", dies_midway)
        with pytest.raises(OSError, match="No space"):
            chip.save()
        monkeypatch.setattr(np.lib.format, "write_array", real)
        kept = ChipStore().load(CHIP)
        assert first is not None and kept is not None and kept.generation == first.generation == 1
        assert_same_state(kept.state, first.state)
        assert sorted(p.suffix for p in sim_state_dir.iterdir()) == [".lock", ".npz"]  # no temporary file left
    finally:
        chip.close()
    assert sorted(p.suffix for p in sim_state_dir.iterdir()) == [".npz"]  # the lock file goes with the lock
    final = ChipStore().load(CHIP)
    assert final is not None and final.generation == 2 and final.state["array/formed"][[0, 9]].all()


def test_unreadable_state_file_is_a_one_line_error(sim_state_dir: Path) -> None:
    path = ChipStore().path(CHIP)
    path.write_bytes(b"not a zip file")
    with pytest.raises(BoardConnectionError, match=f"unreadable.*rram sim reset {CHIP.name}") as err:
        Board.open(URL)
    assert "\n" not in str(err.value)
    with pytest.raises(ChipStoreError, match="not named like a stored chip"):
        ChipStore().read(sim_state_dir / "other.npz")


# ------------------------------------------------------------------------------ processes
HOLD = """
import sys, time
from hil.hardware.board import Board
board = Board.open(sys.argv[1])
board.form(0, 0, v_gate=1.0)
print("ready", flush=True)
time.sleep(120)
"""


def test_second_process_gets_a_one_line_error_and_a_killed_holder_blocks_nobody(sim_state_dir: Path) -> None:
    holder = python(HOLD, URL)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready", holder.communicate()
        wait_for(ChipStore().path(CHIP).exists)  # the saver wrote the formed cell
        cmd = [sys.executable, "-c", "from hil.cli import main; main()", "board", "info", "--port", URL]
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), second.stderr
        for part in (CHIP.name, f"in use by process {holder.pid}", "close that program", "persist=0"):
            assert part in lines[0], lines[0]
        with pytest.raises(BoardConnectionError, match=f"in use by process {holder.pid}"):
            Board.open(URL)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == -signal.SIGKILL
    with Board.open(URL) as board:  # the OS dropped the dead holder's lock
        assert engine_of(board).array.formed[0]


def test_a_second_board_on_the_same_chip_in_one_process_is_refused(sim_state_dir: Path) -> None:
    with Board.open(URL):
        with pytest.raises(BoardConnectionError, match="already open in this process"):
            Board.open(URL)
        with Board.open(URL + "&persist=0"):  # a throwaway copy is always allowed
            pass
    with Board.open(URL):
        pass


def step(board: Board, i: int) -> None:
    """The i-th request of the write loop: FORM every cell, then SET/RESET pulses round the array."""
    r, c = divmod(i % 64, 8)
    if i < 64:
        board.form(r, c, v_gate=1.0)
    elif i % 2:
        board.reset_pulse(r, c, -1.5, 100)
    else:
        board.set_pulse(r, c, 1.2, 100, 1.0)


def write_loop(url: str) -> None:
    """Run by the killed subprocess: requests until SIGKILL."""
    board = Board.open(url)
    for i in range(10**6):
        step(board, i)


def test_sigkill_in_the_middle_of_writes_leaves_one_saved_state(sim_state_dir: Path) -> None:
    proc = python("import sys; from tests.sim_backend.test_chip_store import write_loop; write_loop(sys.argv[1])", URL)
    store = ChipStore()
    try:

        def saved_a_few() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                stored = store.load(CHIP)
            except ChipStoreError:
                return False
            # several saves, the last one after the FORMs (however slow a loaded machine makes them): SET pulses
            return stored is not None and stored.generation >= 4 and int(stored.state["counters"][1]) > 0

        wait_for(saved_a_few)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stored = store.load(CHIP)  # loads: the file is always a whole state
    assert stored is not None and stored.generation >= 4
    total = int(stored.state["counters"].sum())
    # Replay the same requests on a throwaway copy: the stored state is exactly the chip after some request.
    with Board.open(URL + "&persist=0") as board:
        engine = engine_of(board)
        i = 0
        while int(engine.export_state()["counters"].sum()) < total:
            step(board, i)
            i += 1
        assert_same_state(engine.export_state(), stored.state)
    assert i > 64  # it was killed during the pulses, after several saves
    with Board.open(URL) as board:
        assert engine_of(board).array.formed.sum() == stored.state["array/formed"].sum()
    assert not [p for p in sim_state_dir.iterdir() if p.suffix == ".tmp"]  # a killed writer's leftover is removed


ATEXIT = """
import sys
from sim_backend import chip_store
chip_store.SAVE_INTERVAL_S = 3600.0  # no background save: only the exit handler can save this
from hil.hardware.board import Board
board = Board.open(sys.argv[1])
board.form(0, 0, v_gate=1.0)
print(board.counters().form_pulses, flush=True)
"""


def test_normal_exit_saves_a_chip_left_open(sim_state_dir: Path) -> None:
    proc = python(ATEXIT, URL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stored = ChipStore().load(CHIP)
    assert stored is not None and stored.generation == 1
    assert int(stored.state["counters"][0]) == int(out.strip()) and stored.state["array/formed"][0]
