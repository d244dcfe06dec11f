"""The writer's lock of a run file: one process at a time creates, resumes or appends to `RUN.h5`.

The lock is a pid lock (`firmware_protocol.pidlock`: an exclusive flock the OS drops at process death) on
`RUN.h5.lock` beside the run file, held for as long as the run is written, so a lock left by a killed run
never blocks. The lock file is never renamed, unlike the run file (which create and resume replace in one
step), so every writer of one path meets the same lock.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from firmware_protocol.pidlock import LockHeldError, PidLock, holder_pid
from hil.characterize.runcheck import RunFileError

LOCK_WAIT_S = 0.2  # an acquire retries this long, so a probe (a brief shared lock) never makes it fail


class RunBusyError(RunFileError):
    """Another live process is writing the run file (the message is one line naming its pid)."""


def lock_path(run_path: Path) -> Path:
    """`RUN.h5.lock` beside `RUN.h5`."""
    return run_path.with_name(run_path.name + ".lock")


def busy_message(run_path: Path, pid: int) -> str:
    if pid == os.getpid():
        return f"{run_path} is already being written in this process (pid {pid}); close that run first"
    who = f"another rram process (pid {pid})" if pid else "another rram process"
    return f"{run_path} is being written by {who}; wait for it or stop it"


class RunLock(PidLock):
    """An exclusive flock on `RUN.h5.lock` while this process writes `RUN.h5` (released at exit by the OS)."""

    def __init__(self, run_path: Path) -> None:
        super().__init__(lock_path(run_path))
        self.run_path = run_path

    @classmethod
    def acquire(cls, run_path: Path, wait_s: float = LOCK_WAIT_S) -> RunLock:
        """Take the lock; RunBusyError (one line, the holder's pid) if a live process holds it."""
        lock = cls(run_path)
        try:
            lock.take(wait_s)
        except LockHeldError as exc:
            raise RunBusyError(busy_message(run_path, exc.pid)) from None
        except OSError as exc:
            raise RunBusyError(
                f"cannot create the lock file {lock.path} ({exc.strerror or exc}): write the run into a folder you can write to"
            ) from None
        return lock

    def __del__(self) -> None:
        try:
            self.release()
        except (OSError, TypeError, AttributeError):  # interpreter shutdown: the OS drops the flock anyway
            pass


def writer_pid(run_path: Path) -> int | None:
    """The pid of the live process writing `run_path` (0 when it did not say), or None when none is."""
    return holder_pid(lock_path(run_path))


def refuse_if_written(run_path: Path) -> None:
    """RunBusyError now if a live process writes `run_path` (an early check; `RunLock.acquire` is the real one)."""
    pid = writer_pid(run_path)
    if pid is not None:
        raise RunBusyError(busy_message(run_path, pid))


def remove_leftovers(run_path: Path) -> None:
    """Delete temporary files (`RUN.h5.PID.TOKEN.tmp`) of killed writers; call with the lock held."""
    for tmp in run_path.parent.glob(f"{glob.escape(run_path.name)}.*.tmp"):
        tmp.unlink(missing_ok=True)
