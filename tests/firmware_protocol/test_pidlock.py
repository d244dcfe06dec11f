"""The pid lock file shared by simulated chips and run files: one holder, named by pid; dead holders never block."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from firmware_protocol.pidlock import LockHeldError, PidLock, holder_pid, read_pid


def test_a_second_taker_is_refused_naming_the_holder_until_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    first, second = PidLock(path), PidLock(path)
    first.take(0.0)
    assert first.held and path.read_text() == f"{os.getpid()}\n" and holder_pid(path) == os.getpid()
    with pytest.raises(LockHeldError) as exc:  # flock is per open file: this process is refused too
        second.take(0.0)
    assert exc.value.pid == os.getpid() and not second.held
    first.release()
    assert not first.held and not path.exists() and holder_pid(path) is None
    first.release()  # a second release does nothing
    second.take(0.0)
    second.release()


def test_a_waiting_taker_gets_the_lock_when_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    first, second = PidLock(path), PidLock(path)
    first.take(0.0)
    timer = threading.Timer(0.05, first.release)
    timer.start()
    second.take(30.0)  # 30 s: far beyond the 0.05 s the holder keeps it, even on a busy machine
    timer.join()
    assert second.held and holder_pid(path) == os.getpid()
    second.release()


def test_a_lock_left_by_a_dead_process_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    code = "import os, sys; from pathlib import Path; from firmware_protocol.pidlock import PidLock\n"
    code += "PidLock(Path(sys.argv[1])).take(0.0); print(os.getpid()); os._exit(0)  # dies holding it"
    child = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True)
    assert read_pid(path) == int(child.stdout) and holder_pid(path) is None  # its file stays, the OS dropped it
    lock = PidLock(path)
    lock.take(0.0)
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_letting_go_keeps_its_parents_lock(tmp_path: Path) -> None:
    """The child shares the parent's flock: unlocking or removing the file there would free the parent's chip."""
    path = tmp_path / "x.lock"
    lock = PidLock(path)
    lock.take(0.0)
    pid = os.fork()
    if pid == 0:  # the child
        lock.release()
        os._exit(0 if not lock.held else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.held and path.exists() and holder_pid(path) == os.getpid()
    lock.release()


def test_what_is_no_lock_file_is_an_os_error_and_an_unnamed_holder_is_pid_0(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.mkdir()
    with pytest.raises(IsADirectoryError):
        PidLock(path).take(0.0)
    other = tmp_path / "y.lock"
    other.write_text("not a pid\n")
    assert read_pid(other) == 0 and read_pid(tmp_path / "missing.lock") == 0
    assert str(LockHeldError(0)) == "held by another process" and str(LockHeldError(42)) == "held by process 42"
