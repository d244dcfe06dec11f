"""A pid lock file: an exclusive, non-blocking flock whose holder writes its pid, so a refused process can name it.

The OS drops a flock when its process dies, so a lock left by a killed process never blocks (its file
stays until the next holder takes and removes it). On Windows, which has no flock, it is a byte-range
lock of msvcrt. Used by the simulated chips of sim_backend and the run files of hil, so it lives here.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

_WIN_LOCK_BYTE = 1 << 20  # Windows locks are mandatory: lock a byte past the pid, so others can read the pid
_RETRY_S = 0.01  # pause between two tries of a waiting `take`


class LockHeldError(Exception):
    """Another open file holds the lock; `pid` is its holder's (0 when the holder did not say)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"held by process {pid}" if pid else "held by another process")
        self.pid = pid


class PidLock:
    """An exclusive lock on the file at `path`, held from `take` to `release` (or the death of the process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = os.getpid()

    def take(self, wait_s: float) -> None:
        """Lock and write our pid, retrying `wait_s` seconds; OSError if the file cannot be made, else LockHeldError."""
        deadline = time.monotonic() + wait_s
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd, shared=False):
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise LockHeldError(read_pid(self.path))
                time.sleep(_RETRY_S)
                continue
            if _same_file(fd, self.path):  # not removed by a releasing holder between our open and lock
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except BaseException:
                    os.close(fd)
                    raise
                self._fd, self._pid = fd, os.getpid()
                return
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file, then unlock (a later taker that opened the removed file tries again)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.getpid() != self._pid:  # a forked child shares the flock with its parent, which still holds it
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


def holder_pid(path: Path) -> int | None:
    """The pid of the live process holding the lock at `path` (0 when it did not say), or None when none does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if not _try_lock(fd, shared=True):  # a brief shared lock, released at once
            return read_pid(path)
        _unlock(fd)
        return None
    finally:
        os.close(fd)


def read_pid(path: Path) -> int:
    """The pid written in the lock file, 0 when there is none (unreadable, empty, or not a number)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _try_lock(fd: int, shared: bool) -> bool:
    """Lock `fd` without waiting; False when another open file (another process) holds the lock."""
    if sys.platform == "win32":
        os.lseek(fd, _WIN_LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # no shared locks there: a probe locks briefly
        except OSError:
            return False
    else:
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


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (a releasing holder may have removed it)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
