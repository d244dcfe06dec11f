"""Simulated chips that persist: one state file and one lock per chip, in a per-user folder (see SIM.md).

A simulated chip is named by its seed and size, ``seed0_64x64``, and is also keyed by its physics (a
fingerprint of its DeviceParams and of the pristine state they give), so a changed physics never loads
an old state. The optional spatial gain field is physics too: a chip with another field (or none) is
another chip, as a chip of another size is; a chip without one keeps the fingerprint it had before
the field existed. `PersistentChip` binds a FirmwareEngine to its stored chip while a link is open: the
state is loaded at open, saved atomically at most every `SAVE_INTERVAL_S` while it changes and on
close, and the chip's lock (an flock the OS drops when the process dies) keeps a second process off
the chip.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import re
import sys
import threading
import time
import weakref
import zipfile
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from firmware_protocol.fileformat import FileFormat, atomic_write, software_version, utc_now
from firmware_protocol.pidlock import LockHeldError, PidLock, holder_pid
from sim_backend.board_config import BoardConfig
from sim_backend.device_model import RRAMArray, spatial_gain_field
from sim_backend.device_params import DeviceParams
from sim_backend.firmware import FirmwareEngine
from sim_backend.sim_url import make_sim_url

STATE_DIR_ENV = "RRAM_SIM_STATE_DIR"
# 1.1: meta records the chip's spatial gain field ("spatial": [sigma, length in cells] or null); 1.0 files had none
CHIP_FORMAT = FileFormat("rram-hil sim chip", "1.1", "an rram-hil simulated-chip state file")
SAVE_INTERVAL_S = 0.25  # longest time a change waits for the disk (a SIGKILL loses at most this much history)
SAVE_SHARE = 0.1  # big chips wait longer: saving takes at most this share of the time (64x64 saves in ~3 ms)
LOCK_WAIT_S = 0.2  # an open retries this long, so a `rram sim status` probing the lock never makes it fail
_STATE_PREFIX = "state/"  # members of the npz: "meta" (JSON) and "state/<key>" for every key of export_state
_NAME = re.compile(r"seed(-?\d+)_(\d+)x(\d+)")
_FILE = re.compile(r"(seed-?\d+_\d+x\d+)_([0-9a-f]{12})\.npz")


class ChipStoreError(ValueError):
    """A stored chip cannot be used (unreadable, foreign, folder not writable); the message is one line."""


class ChipBusyError(ChipStoreError):
    """Another process (or another link in this one) has the chip open."""


def default_state_dir() -> Path:
    """`$RRAM_SIM_STATE_DIR`, else `$XDG_STATE_HOME/rram-hil/sim` (XDG default: ~/.local/state)."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser().absolute() / "rram-hil" / "sim"


_SPATIAL_FIELDS = ("spatial_sigma", "spatial_length_cells")


@lru_cache(maxsize=8)
def physics_fingerprint(device: DeviceParams) -> str:
    """12 hex digits naming the chip's physics: its DeviceParams and the pristine state they give a probe array.

    The probe catches a changed simulator (new random streams, new state arrays) even when the
    parameters stayed the same: a state saved by other physics is a different chip. Without a spatial
    field the spatial parameters are left out (the fingerprint is the one of the software before them);
    with one, the probe's field is hashed too (a changed field generator is other physics).
    """
    params = asdict(device)
    if device.spatial_sigma == 0.0:
        for name in _SPATIAL_FIELDS:
            params.pop(name)
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=repr).encode())
    probe = RRAMArray(4, 4, device, seed=0).export_state()
    for key in sorted(probe):
        value = np.ascontiguousarray(probe[key])
        h.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
        h.update(value.tobytes())
    if device.spatial_sigma != 0.0:
        h.update(b"spatial_ln_gain:")
        h.update(np.ascontiguousarray(spatial_gain_field(4, 4, device, seed=0)).tobytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class ChipId:
    """Which simulated chip: seed, size, physics fingerprint, and its spatial gain field (sigma, length) if any."""

    seed: int
    rows: int
    cols: int
    physics: str
    spatial: tuple[float, float] | None = None  # (spatial_sigma, spatial_length_cells) of DeviceParams; None: none

    @classmethod
    def of(cls, config: BoardConfig) -> ChipId:
        d = config.device
        spatial = (d.spatial_sigma, d.spatial_length_cells) if d.spatial_sigma != 0.0 else None
        return cls(config.seed, config.rows, config.cols, physics_fingerprint(d), spatial)

    def default_physics(self) -> DeviceParams:
        """This software's default DeviceParams with this chip's spatial field: what "current physics" means."""
        if self.spatial is None:
            return DeviceParams()
        sigma, length = self.spatial
        return replace(DeviceParams(), spatial_sigma=sigma, spatial_length_cells=length)

    @property
    def name(self) -> str:
        """What people call the chip: ``seed0_64x64``."""
        return chip_name(self.seed, self.rows, self.cols)

    @property
    def stem(self) -> str:
        return f"{self.name}_{self.physics}"

    @property
    def throwaway_url(self) -> str:
        """The URL of a pristine, never-saved copy of this chip (its spatial field included)."""
        field = {} if self.spatial is None else {"spatial": self.spatial[0], "spatial_len": self.spatial[1]}
        return make_sim_url(self.seed, self.rows, self.cols, **field, persist=0)


def chip_name(seed: int, rows: int, cols: int) -> str:
    return f"seed{seed}_{rows}x{cols}"


def parse_chip_name(text: str) -> tuple[int, int, int] | None:
    """(seed, rows, cols) of a chip name like ``seed0_64x64``; None if `text` is not one."""
    m = _NAME.fullmatch(text.strip())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


@dataclass(frozen=True)
class StoredChip:
    """One state file: the chip, the engine state it holds (every key of export_state) and its metadata."""

    chip: ChipId
    path: Path
    state: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def generation(self) -> int:
        """How many saves this chip has seen (across processes)."""
        return int(self.meta.get("generation", 0))


@dataclass(frozen=True)
class LockState:
    """Whether a chip's lock is held, and by which process id (0 when the holder did not say)."""

    held: bool
    pid: int = 0


class ChipStore:
    """The folder of stored chips: paths, reading and atomic writing of state files, lock probes, deletion."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder).expanduser().absolute() if folder else default_state_dir()

    def path(self, chip: ChipId) -> Path:
        return self.folder / f"{chip.stem}.npz"

    def lock_path(self, chip: ChipId) -> Path:
        return self.folder / f"{chip.stem}.lock"

    def ensure_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChipStoreError(
                f"cannot create the simulated-chip folder {self.folder} ({exc.strerror or exc}): "
                f"set {STATE_DIR_ENV} to a writable folder, or use a throwaway chip (sim://?persist=0)"
            ) from None

    # ------------------------------------------------------------------ reading
    def load(self, chip: ChipId) -> StoredChip | None:
        """The stored state of `chip`, or None for a chip never saved (pristine)."""
        path = self.path(chip)
        return self.read(path) if path.exists() else None

    def read(self, path: Path) -> StoredChip:
        """Read one state file; ChipStoreError (one line, naming the reset command) if it is not usable."""
        m = _FILE.fullmatch(path.name)
        if m is None:
            raise ChipStoreError(f"{path} is not named like a stored chip (seedS_RxC_PHYSICS.npz)")
        reset = f"`rram sim reset {m[1]}` discards it"
        try:
            with np.load(path, allow_pickle=False) as z:
                if "meta" not in z.files:
                    raise ChipStoreError(f"{path} is not {CHIP_FORMAT.what} ({reset})")
                meta = json.loads(str(z["meta"]))
                if not isinstance(meta, dict):
                    raise ChipStoreError(f"{path} is not {CHIP_FORMAT.what} ({reset})")
                CHIP_FORMAT.check(meta, str(path), ChipStoreError)
                n = len(_STATE_PREFIX)
                state = {k[n:]: z[k] for k in z.files if k.startswith(_STATE_PREFIX)}
            spatial = meta.get("spatial")  # absent in format 1.0: no field
            chip = ChipId(
                int(meta["seed"]),
                int(meta["rows"]),
                int(meta["cols"]),
                str(meta["physics"]),
                None if spatial is None else (float(spatial[0]), float(spatial[1])),
            )
        except ChipStoreError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, EOFError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ChipStoreError(f"{path} is unreadable ({reason}): {reset}") from None
        if chip.stem != path.name[: -len(".npz")]:
            raise ChipStoreError(f"{path} holds chip {chip.stem}, not the one its name says ({reset})")
        return StoredChip(chip, path, state, meta)

    def files(self) -> list[Path]:
        """Every state file in the folder, sorted by name."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _FILE.fullmatch(p.name))

    def known(self) -> list[Path]:
        """State paths of every chip with a state file or a lock file (an open chip not saved yet), by name."""
        if not self.folder.is_dir():
            return []
        names = {p.with_suffix(".npz").name for p in self.folder.iterdir() if p.suffix in (".npz", ".lock")}
        return sorted(self.folder / n for n in names if _FILE.fullmatch(n))

    def variants(self, seed: int, rows: int, cols: int) -> list[Path]:
        """State paths of this seed and size (stored or open), whatever physics they have."""
        prefix = chip_name(seed, rows, cols) + "_"
        return [p for p in self.known() if p.name.startswith(prefix)]

    # ------------------------------------------------------------------ writing
    def write(self, chip: ChipId, state: dict[str, np.ndarray], generation: int) -> dict[str, Any]:
        """Write `state` as the chip's file in one atomic step (a killed writer leaves the previous file)."""
        meta: dict[str, Any] = {
            **CHIP_FORMAT.stamp(),
            "chip": chip.name,
            "seed": chip.seed,
            "rows": chip.rows,
            "cols": chip.cols,
            "physics": chip.physics,
            "spatial": None if chip.spatial is None else list(chip.spatial),
            "generation": generation,
            "saved_at": utc_now(),
            "saved_unix": time.time(),
            "pid": os.getpid(),
            "software": _software(),
        }
        self.ensure_folder()
        with atomic_write(self.path(chip), force=True) as tmp, open(tmp, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                zf.writestr("meta.npy", _npy_bytes(np.array(json.dumps(meta))))
                for key, value in state.items():
                    with zf.open(f"{_STATE_PREFIX}{key}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        return meta

    def remove_leftovers(self, chip: ChipId) -> None:
        """Delete temporary files of killed writers (call with the chip's lock held: no live writer exists)."""
        for tmp in self.folder.glob(f"{self.path(chip).name}.*.tmp"):
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ locks
    def lock_state(self, chip: ChipId) -> LockState:
        return probe_lock(self.lock_path(chip))

    def delete(self, paths: list[Path]) -> list[Path]:
        """Delete these state files, refusing in one line (deleting nothing) if any of the chips is open.

        Returns the files that existed.
        """
        paths = [p for p in paths if p.exists() or p.with_suffix(".lock").exists()]
        locks: list[ChipLock] = []
        try:
            for path in paths:
                m = _FILE.fullmatch(path.name)
                lock = ChipLock(path.with_suffix(".lock"), m[1] if m else path.stem, throwaway_url="")
                lock.acquire(wait_s=0.0, action="reset it")
                locks.append(lock)
            deleted = [p for p in paths if p.exists()]
            for path in deleted:
                path.unlink()
            return deleted
        finally:
            for lock in locks:
                lock.release()


@dataclass(frozen=True)
class ChipReport:
    """What `rram sim status` and `rram sim list` show of one chip (stored, or pristine when never saved)."""

    chip: ChipId
    path: Path
    stored: bool
    current_physics: bool  # saved by this software's physics (else it is never loaded)
    cells: int
    formed: int
    stuck_lrs: int
    stuck_hrs: int
    clock_s: float
    counters: dict[str, int]
    boots: int
    generation: int
    saved_at: str | None
    saved_by_pid: int | None
    lock: LockState

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, SI units (seconds)."""
        return {
            "chip": self.chip.name,
            "seed": self.chip.seed,
            "rows": self.chip.rows,
            "cols": self.chip.cols,
            "physics": self.chip.physics,
            "current_physics": self.current_physics,
            "file": str(self.path),
            "stored": self.stored,
            "cells": self.cells,
            "formed": self.formed,
            "stuck_lrs": self.stuck_lrs,
            "stuck_hrs": self.stuck_hrs,
            "clock_s": self.clock_s,
            "counters": dict(self.counters),
            "boots": self.boots,
            "generation": self.generation,
            "saved_at": self.saved_at,
            "saved_by_pid": self.saved_by_pid,
            "locked": self.lock.held,
            "lock_pid": self.lock.pid if self.lock.held else None,
        }


def report(store: ChipStore, chip: ChipId, stored: StoredChip | None = None) -> ChipReport:
    """The report of `chip`: from its stored state if any, else from the pristine chip its seed gives."""
    if stored is None:
        stored = store.load(chip)
    if stored is None:
        state = FirmwareEngine(BoardConfig(rows=chip.rows, cols=chip.cols, seed=chip.seed)).export_state()
        meta: dict[str, Any] = {}
    else:
        state, meta = stored.state, stored.meta
    counts = [int(x) for x in np.asarray(state.get("counters", np.zeros(4))).ravel()[:4]]
    return ChipReport(
        chip=chip,
        path=store.path(chip),
        stored=stored is not None,
        current_physics=_is_current(chip),
        cells=chip.rows * chip.cols,
        formed=_count(state, "array/formed"),
        stuck_lrs=_count(state, "array/stuck_lrs"),
        stuck_hrs=_count(state, "array/stuck_hrs"),
        clock_s=float(np.asarray(state.get("array/time_s", 0.0))),
        counters=dict(zip(("form", "set", "reset", "reads"), counts, strict=False)),
        boots=int(np.asarray(state.get("boots", 0))),
        generation=int(meta.get("generation", 0)),
        saved_at=meta.get("saved_at"),
        saved_by_pid=meta.get("pid"),
        lock=store.lock_state(chip),
    )


def _is_current(chip: ChipId) -> bool:
    """True when this software's default physics, with the chip's spatial field, gives the chip's fingerprint."""
    try:
        return chip.physics == physics_fingerprint(chip.default_physics())
    except ValueError:  # a spatial field no DeviceParams accepts: not this software's
        return False


def _count(state: dict[str, np.ndarray], key: str) -> int:
    return int(np.count_nonzero(state[key])) if key in state else 0


@lru_cache(maxsize=1)
def _software() -> str:
    return software_version()


def _npy_bytes(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, value, allow_pickle=False)
    return buf.getvalue()


class ChipLock(PidLock):
    """An exclusive flock on a chip's lock file while a process has the chip open (the OS drops it at process death).

    The holder writes its pid into the file, so a refused process can name it, and removes the file
    when it lets go; an opener that locked a file removed meanwhile tries again on the new one.
    """

    def __init__(self, path: Path, name: str, throwaway_url: str) -> None:
        super().__init__(path)
        self.name = name
        self.throwaway_url = throwaway_url

    def acquire(self, wait_s: float = LOCK_WAIT_S, action: str = "open it") -> None:
        """Take the lock; ChipBusyError (one line naming the holder's pid and `action`) if a live process holds it."""
        try:
            self.take(wait_s)
        except LockHeldError as exc:
            raise ChipBusyError(self._busy(exc.pid, action)) from None
        except OSError as exc:
            raise ChipStoreError(
                f"cannot open the lock file {self.path} ({exc.strerror or exc}): set {STATE_DIR_ENV} to a "
                f"writable folder, or use a throwaway chip ({self.throwaway_url or 'sim://?persist=0'})"
            ) from None

    def _busy(self, pid: int, action: str) -> str:
        if pid == os.getpid():
            who, step = "already open in this process", "close the other board first"
        else:
            who = f"in use by process {pid}" if pid else "in use by another process"
            step = "close that program first"
        alternative = f", or use a throwaway chip ({self.throwaway_url})" if self.throwaway_url else ""
        return f"simulated chip {self.name} is {who}: {step} to {action}{alternative}"


def probe_lock(path: Path) -> LockState:
    """Whether the lock at `path` is held right now (a shared try-lock, released at once)."""
    pid = holder_pid(path)
    return LockState(False) if pid is None else LockState(True, pid)


_OPEN_CHIPS: weakref.WeakSet[PersistentChip] = weakref.WeakSet()


class PersistentChip:
    """A FirmwareEngine bound to its stored chip while a link is open.

    `open` takes the chip's lock and loads its state (a chip never saved stays pristine). The link
    calls `maybe_save` after requests, holding `guard` (so a save never sees half a request): the chip
    is written when a request changed it (it moved a pulse or read counter, the virtual clock, or
    rebooted the firmware) and `interval_s` (or 1/SAVE_SHARE times the last save's duration, if
    longer) has passed since the last save. A background thread saves a change left when the link
    went idle, at the end of its interval. `close` saves and releases the lock.
    """

    def __init__(
        self,
        engine: FirmwareEngine,
        store: ChipStore,
        chip: ChipId,
        lock: ChipLock,
        stored: StoredChip | None,
        interval_s: float,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"save interval must be positive, got {interval_s!r} s")
        self.engine, self.store, self.chip, self.lock, self.interval_s = engine, store, chip, lock, interval_s
        self.guard = threading.RLock()
        self.generation = stored.generation if stored else 0
        self.last_saved: float | None = float(stored.meta.get("saved_unix", 0.0)) if stored else None
        self.loaded = stored is not None
        self._saved_mark = self._mark()
        self._pid = os.getpid()
        self._closed = False
        self._warned = False
        self._wait_s = interval_s
        self._due = time.monotonic() + interval_s  # no save before this time (rate limit)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._autosave, name=f"rram-sim-save-{chip.name}", daemon=True)
        self._thread.start()
        _OPEN_CHIPS.add(self)

    @classmethod
    def open(
        cls, engine: FirmwareEngine, store: ChipStore | None = None, interval_s: float | None = None
    ) -> PersistentChip:
        """Lock the engine's chip and load its stored state into the engine (ChipStoreError in one line).

        `interval_s` defaults to the module's SAVE_INTERVAL_S at the time of the call.
        """
        store = store if store is not None else ChipStore()
        interval_s = SAVE_INTERVAL_S if interval_s is None else interval_s
        chip = ChipId.of(engine.config)
        store.ensure_folder()
        lock = ChipLock(store.lock_path(chip), chip.name, chip.throwaway_url)
        lock.acquire()
        try:
            store.remove_leftovers(chip)
            stored = store.load(chip)
            if stored is not None:
                try:
                    engine.import_state(stored.state)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ChipStoreError(
                        f"{stored.path} does not fit this chip ({str(exc).splitlines()[0] if str(exc) else exc!r}): "
                        f"`rram sim reset {chip.name}` discards it, or use a throwaway chip ({chip.throwaway_url})"
                    ) from None
            return cls(engine, store, chip, lock, stored, interval_s)
        except BaseException:
            lock.release()
            raise

    @property
    def path(self) -> Path:
        return self.store.path(self.chip)

    @property
    def closed(self) -> bool:
        return self._closed

    def _mark(self) -> tuple[float, ...]:
        """Changes whenever a request changed the chip: session (reboots), counters, virtual clock."""
        c = self.engine.counters
        return (self.engine.session_id, c.form, c.set, c.reset, c.reads, self.engine.array.time_s)

    def save(self) -> bool:
        """Write the chip now if it changed since the last save; True if a file was written."""
        with self.guard:  # between requests: the file is one consistent chip
            if self._closed:
                return False
            mark = self._mark()
            if mark == self._saved_mark:
                return False
            t0 = time.monotonic()
            meta = self.store.write(self.chip, self.engine.export_state(), self.generation + 1)
            now = time.monotonic()
            self._wait_s = max(self.interval_s, (now - t0) / SAVE_SHARE)
            self._due = now + self._wait_s
            self.generation += 1
            self._saved_mark = mark
            self.last_saved = float(meta["saved_unix"])
            return True

    def maybe_save(self) -> None:
        """Save if the chip changed and the save interval has passed (called by the link after requests)."""
        if time.monotonic() < self._due:
            return
        try:
            self.save()
        except (OSError, ChipStoreError) as exc:  # the board keeps working; the user is told once
            self._warn(exc)

    def _autosave(self) -> None:
        """Save a change that no later request saved, when its interval ends (the link may be idle)."""
        while True:
            delay = self._due - time.monotonic()
            if self._stop.wait(delay if delay > 0 else self.interval_s):
                return
            self.maybe_save()

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: simulated chip {self.chip.name} not saved to {self.path}: {exc}", file=sys.stderr)

    def close(self) -> None:
        """Save what changed, stop the saver and release the lock (a forked child never touches the parent's chip)."""
        if self._closed or os.getpid() != self._pid:
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self.save()
        except (OSError, ChipStoreError) as exc:
            self._warned = False
            self._warn(exc)
        finally:
            self._closed = True
            self.lock.release()
            _OPEN_CHIPS.discard(self)


@atexit.register
def _close_open_chips() -> None:
    """Normal interpreter exit saves every chip still open (links never closed)."""
    for chip in list(_OPEN_CHIPS):
        chip.close()
