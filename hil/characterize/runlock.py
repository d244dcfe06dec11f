"""The writer's lock of a run file: one process at a time creates, resumes or appends to `RUN.h5`.

The lock is an exclusive `flock` on `RUN.h5.lock` beside the run file (on Windows a byte-range lock of
msvcrt), held for as long as the run is written; the holder writes its pid into it so a refused process can name it. The OS drops a flock when
its process dies, so a lock left by a killed run never blocks (its file stays until the next writer
takes and removes it). The lock file is never renamed, unlike the run file (which create and resume
replace in one step), so every writer of one path meets the same lock.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path

from hil.characterize.runcheck import RunFileError

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

LOCK_WAIT_S = 0.2  # an acquire retries this long, so a probe (a brief shared lock) never makes it fail
_WIN_LOCK_BYTE = 1 << 20  # Windows locks are mandatory: lock a byte past the pid, so others can read the pid


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


class RunLock:
    """An exclusive flock on `RUN.h5.lock` while this process writes `RUN.h5` (released at exit by the OS)."""

    def __init__(self, run_path: Path) -> None:
        self.run_path = run_path
        self.path = lock_path(run_path)
        self._fd: int | None = None
        self._pid = os.getpid()

    @classmethod
    def acquire(cls, run_path: Path, wait_s: float = LOCK_WAIT_S) -> RunLock:
        """Take the lock; RunBusyError (one line, the holder's pid) if a live process holds it."""
        lock = cls(run_path)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunBusyError(
                    f"cannot create the lock file {lock.path} ({exc.strerror or exc}): write the run into a folder you can write to"
                ) from None
            if not _try_lock(fd, shared=False):
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise RunBusyError(busy_message(run_path, _read_pid(lock.path))) from None
                time.sleep(0.01)
                continue
            if _same_file(fd, lock.path):  # not removed by a releasing writer between our open and flock
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                lock._fd = fd
                return lock
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file, then unlock (a later writer that opened the removed file tries again)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.getpid() != self._pid:  # a forked child: the flock is shared with the parent, which still writes
            os.close(fd)
            return
        if sys.platform == "win32":  # an open file cannot be removed there: unlock and close first
            try:
                _unlock(fd)
            finally:
                os.close(fd)
            self.path.unlink(missing_ok=True)
            return
        try:
            self.path.unlink(missing_ok=True)
            _unlock(fd)
        finally:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.release()
        except (OSError, TypeError, AttributeError):  # interpreter shutdown: the OS drops the flock anyway
            pass


def writer_pid(run_path: Path) -> int | None:
    """The pid of the live process writing `run_path` (0 when it did not say), or None when none is."""
    path = lock_path(run_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if not _try_lock(fd, shared=True):
            return _read_pid(path)
        _unlock(fd)
        return None
    finally:
        os.close(fd)


def _try_lock(fd: int, shared: bool) -> bool:
    """Lock `fd` without waiting; False when another open file (another process) holds the lock."""
    if sys.platform == "win32":
        os.lseek(fd, _WIN_LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # no shared locks there: a probe locks briefly
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        os.lseek(fd, _WIN_LOCK_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)


def refuse_if_written(run_path: Path) -> None:
    """RunBusyError now if a live process writes `run_path` (an early check; `RunLock.acquire` is the real one)."""
    pid = writer_pid(run_path)
    if pid is not None:
        raise RunBusyError(busy_message(run_path, pid))


def remove_leftovers(run_path: Path) -> None:
    """Delete temporary files (`RUN.h5.PID.TOKEN.tmp`) of killed writers; call with the lock held."""
    for tmp in run_path.parent.glob(f"{glob.escape(run_path.name)}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_pid(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0
