"""Run files: one HDF5 file per characterization run, crash-safe and resumable (schema in RUNFILE.md).

Every table a procedure writes is declared when the run is created; the file is then switched to
HDF5 single-writer/multiple-reader (SWMR) mode, in which appended data reach the disk in an order
that keeps the file readable if the process dies. A record counts once it is committed: every flush
(at least every `flush_s` seconds) writes the records appended since the last one (held in memory until
then, one block per table), then the committed counts with the resume state.
One process at a time writes a run file (`runlock`); every reader goes through the checks of `runcheck`.
A run that was interrupted keeps status "running"; `resume_run` copies what was committed into a clean
file and carries on appending, so the finished file has the same content as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from firmware_protocol.fileformat import FileFormat, atomic_write, software_version, utc_now
from hil.characterize.identity import RunIdentity
from hil.characterize.runcheck import RECOPY, CheckedRun, RunFileError, check_run, declared_dtypes, read_tables
from hil.characterize.runlock import RunBusyError, RunLock, refuse_if_written, remove_leftovers, writer_pid

RUN_FILE = FileFormat("rram-hil-run", "1.1", "an rram-hil run file")
FORMAT_NAME = RUN_FILE.name
FORMAT_VERSION = RUN_FILE.version

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RUN_FILE",
    "Run",
    "RunBusyError",
    "RunData",
    "RunFileError",
    "RunWriter",
    "Table",
    "Tables",
    "create_run",
    "read_run",
    "refuse_if_written",
    "resume_run",
]


@dataclass(frozen=True)
class Table:
    """A dataset of records: one compound row per record, appended atomically.

    `fields` maps a field name to (dtype, shape), e.g. {"cell": ("i4", (2,)), "g": ("f8", ())}.
    Units and meanings of the fields are documented per procedure in RUNFILE.md.
    """

    fields: dict[str, tuple[str, tuple[int, ...]]]
    doc: str = ""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype([(name, np.dtype(dt), tuple(shape)) for name, (dt, shape) in self.fields.items()])


class Tables(dict[str, np.ndarray]):
    """A run's tables by name; a table the file lacks is a one-line RunFileError naming the file, not a KeyError."""

    def __init__(self, path: Path = Path("run.h5"), procedure: str = "", tables: dict[str, np.ndarray] | None = None):
        super().__init__(tables or {})
        self.path, self.procedure = path, procedure

    def __missing__(self, name: str) -> np.ndarray:
        raise RunFileError(f"{self.path}: this {self.procedure} run file has no table {name!r}; {RECOPY}")


@dataclass
class RunData:
    """Everything a run file holds, loaded into memory (the committed records of each table)."""

    path: Path
    procedure: str
    status: str
    params: dict
    board: dict
    calibration: dict
    data: dict[str, np.ndarray]
    attrs: dict
    summary: dict = field(default_factory=dict)
    state: dict[str, float] = field(default_factory=dict)  # the committed resume state, by key

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def identity(self) -> RunIdentity:
        """The board and chip the run was measured on."""
        return _identity(self.board, self.attrs.get("chip"))


# Records a table may hold in memory before they are written to the file (not committed) even between commits.
_MAX_BUFFERED_BYTES = 8 << 20


class RunWriter:
    """Appends records to the declared tables of an open run; commits them, with the state, at each flush.

    Appended records wait in memory, one block per table, and reach the file at each flush: one resize and
    one write per table per commit instead of per record (a table whose block passes _MAX_BUFFERED_BYTES is
    written, not committed, before it grows further). What reaches the disk and when it counts is as when
    every record was written at once, since only a commit makes a record count: a kill loses the records
    appended since the last commit either way. `count`, `read` and `read_record` see every record appended,
    buffered or written; `read_run` and a resume see the committed ones. `flush` writes the buffered records,
    then the committed counts and the state in one chunk, and flushes again, so a kill at any instant leaves
    on disk either the old counts or the new ones with every record they count.
    """

    def __init__(self, f: h5py.File, path: Path, flush_s: float, checked: CheckedRun):
        self._f = f
        self.path = path
        self.flush_s = flush_s
        self._last_flush = time.monotonic()
        self.on_append: Callable[[str], None] | None = None  # called with the table's name after each append
        group = f["data"]
        self._ds: dict[str, h5py.Dataset] = {name: group[name] for name in checked.counts}  # declaration order
        self._dtype = {name: ds.dtype for name, ds in self._ds.items()}
        # Per table (records in the file, records buffered after them), replaced in one step so that an
        # interrupt never leaves a record counted twice or a buffered one uncounted.
        self._pos: dict[str, tuple[int, int]] = {name: (n, 0) for name, n in checked.counts.items()}
        self._buf: dict[str, np.ndarray] = {name: np.zeros(0, dtype=dt) for name, dt in self._dtype.items()}
        self._state_ds: h5py.Dataset = f["state"]
        self._keys = list(checked.state_keys)
        self._state = checked.state.copy()

    def tables(self) -> list[str]:
        """Names of the tables the run file declares."""
        return list(self._pos)

    def count(self, name: str) -> int:
        """Records appended so far to table `name` (committed, written or still buffered)."""
        written, buffered = self._pos[name]
        return written + buffered

    def append(self, name: str, records: np.ndarray | None = None, /, **values: object) -> None:
        """Append one record given as keyword fields (any names, `name` and `records` too), or a structured array.

        The `on_append` hook runs before a timed flush, so a record and the state the hook sets commit together.
        """
        dtype = self._table_dtype(name)
        if records is None:
            names = dtype.names or ()
            missing = set(names) - set(values)
            extra = set(values) - set(names)
            if missing or extra:
                raise ValueError(f"table {name!r}: missing fields {sorted(missing)}, unknown fields {sorted(extra)}")
            buf, written, start = self._room(name, 1)
            for k, v in values.items():  # the row is counted only once every field is in place
                buf[k][start] = v
            stop = start + 1
        else:
            records = np.asarray(records)
            if records.dtype != dtype:
                raise ValueError(f"table {name!r} takes records of dtype {dtype}, got {records.dtype}")
            buf, written, start = self._room(name, records.shape[0])
            stop = start + records.shape[0]
            buf[start:stop] = records
        self._pos[name] = (written, stop)
        if self.on_append is not None:
            self.on_append(name)
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def _table_dtype(self, name: str) -> np.dtype:
        try:
            return self._dtype[name]
        except KeyError:
            raise KeyError(f"table {name!r} was not declared (the run file has {', '.join(self._dtype)})") from None

    def _room(self, name: str, k: int) -> tuple[np.ndarray, int, int]:
        """The table's buffer with room for `k` more records, and its (written, buffered) counts after any write."""
        buf = self._buf[name]
        written, buffered = self._pos[name]
        if buffered + k <= buf.shape[0]:
            return buf, written, buffered
        if buffered and (buffered + k) * buf.dtype.itemsize > _MAX_BUFFERED_BYTES:
            self._write(name)
            written, buffered = self._pos[name]
            if k <= buf.shape[0]:
                return buf, written, buffered
        rows = max(k + buffered, 2 * buf.shape[0], _chunk_rows(buf.dtype))
        rows = min(rows, max(k + buffered, _MAX_BUFFERED_BYTES // buf.dtype.itemsize))
        grown = np.zeros(rows, dtype=buf.dtype)
        grown[:buffered] = buf[:buffered]
        self._buf[name] = grown
        return grown, written, buffered

    def _write(self, name: str) -> None:
        """The table's buffered records into the file after its written ones (one resize, one write; not a commit).

        A write cut short leaves the counts as they were: the next write writes the same records over it.
        """
        written, buffered = self._pos[name]
        if not buffered:
            return
        ds, end = self._ds[name], written + buffered
        if ds.shape[0] < end:  # larger already when a write was cut short: its rows are written over
            ds.resize(end, axis=0)
        ds[written:end] = self._buf[name][:buffered]
        self._pos[name] = (end, 0)

    def read(self, name: str) -> np.ndarray:
        """Every record of table `name` appended so far (`count` of them), written or buffered, as a new array."""
        written, buffered = self._pos[name]
        on_file = self._ds[name][:written]
        return np.concatenate([on_file, self._buf[name][:buffered]]) if buffered else on_file

    def read_record(self, name: str, index: int) -> np.void:
        """One record of table `name` (negative `index` counts from the end), without reading the table."""
        written, buffered = self._pos[name]
        n = written + buffered
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"table {name!r} has {n} records, no record {index}")
        if i >= written:
            return self._buf[name][i - written].copy()  # not a view of the buffer
        return self._ds[name][i]

    def set_state(self, **values: float) -> None:
        """Small numeric resume state (e.g. the board time at which programming ended); committed at the next flush."""
        for k, v in values.items():
            if k not in self._keys:
                raise KeyError(f"state key {k!r} was not declared")
            self._state[self._keys.index(k)] = v

    def state(self, key: str) -> float:
        return float(self._state[self._keys.index(key)])

    def flush(self) -> None:
        """Commit: the buffered records reach the file, then the counts and state (one chunk), then the file again."""
        for name in self._pos:
            self._write(name)
        self._f.flush()
        counts = np.array([float(w + b) for w, b in self._pos.values()])
        self._state_ds[...] = np.concatenate([self._state, counts])
        self._f.flush()
        self._last_flush = time.monotonic()


class Run:
    """Context manager around one run file being written (created anew or resumed), holding its writer's lock.

    Leaving the `with` block closes the file; the lock is kept until `complete` (or released at once when
    the block ended with an exception, or by `close`).
    """

    def __init__(self, path: Path, f: h5py.File, flush_s: float, lock: RunLock, checked: CheckedRun):
        self.path = path
        self._f = f
        self._lock = lock
        self.writer = RunWriter(f, path, flush_s, checked)
        self._finished = False

    def __enter__(self) -> RunWriter:
        return self.writer

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._close_file()
        except BaseException:  # the last commit failed (the file keeps the one before): the lock goes too
            self.close()
            raise
        if exc_type is not None:
            self.close()

    def _close_file(self) -> None:
        if self._f.id.valid:
            try:
                self.writer.flush()
            finally:
                self._f.close()

    def complete(self, summary: dict) -> None:
        """Mark the run complete with a summary (reopens the file outside SWMR to write attributes)."""
        self._close_file()
        try:
            with h5py.File(self.path, "r+") as f:
                for name in self.writer.tables():  # drop the rows of a write cut short
                    n = self.writer.count(name)
                    if f["data"][name].shape[0] != n:
                        f["data"][name].resize(n, axis=0)
                f.attrs["status"] = "complete"
                f.attrs["completed_utc"] = utc_now()
                f.attrs["summary_json"] = json.dumps(summary, default=_jsonable)
        finally:
            self.close()

    def close(self, complete: bool = False) -> None:
        """Close the file and let go of the lock (the run stays as it is: complete, or running to resume)."""
        try:
            if not self._finished:
                self._close_file()
        finally:
            self._finished = True
            self._lock.release()


def _jsonable(x: object) -> object:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot store {type(x).__name__} in a run file")


def _identity(board: dict, chip: object) -> RunIdentity:
    """The run's identity from its board description and `chip` attribute (a 1.0 file: from its port)."""
    return RunIdentity.of(board, None if chip is None else str(chip))


def _declaration(dtype: np.dtype) -> list[list]:
    """A record type as `tables_json` stores it: [[field, numpy type string, shape], ...]."""
    out = []
    for name in dtype.names or ():
        sub = dtype.fields[name][0]  # type: ignore[index]
        out.append([name, sub.base.str, list(sub.shape)])
    return out


def _chunk_rows(dtype: np.dtype) -> int:
    return max(1, min(4096, (1 << 16) // max(1, dtype.itemsize)))


def _declare(
    f: h5py.File,
    tables: dict[str, np.dtype],
    docs: dict[str, str],
    state_keys: list[str],
    data: dict[str, np.ndarray] | None = None,
    state: np.ndarray | None = None,
) -> None:
    """The tables (chunked, with fletcher32 checksums), their declaration and the state with committed counts."""
    g = f.create_group("data")
    counts = []
    for name, dt in tables.items():
        rows = data[name] if data is not None and name in data else np.zeros(0, dtype=dt)
        ds = g.create_dataset(name, data=rows, maxshape=(None,), chunks=(_chunk_rows(dt),), fletcher32=True)
        ds.attrs["doc"] = docs.get(name, "")
        counts.append(float(rows.shape[0]))
    f.attrs["tables_json"] = json.dumps({name: _declaration(dt) for name, dt in tables.items()})
    n_state = max(1, len(state_keys))
    values = np.zeros(n_state) if state is None else np.asarray(state, dtype=np.float64)
    full = np.concatenate([values, np.array(counts)])
    f.create_dataset("state", data=full, chunks=(full.size,), fletcher32=True)
    f.attrs["state_keys"] = json.dumps(state_keys)


def create_run(
    path: str | os.PathLike,
    procedure: str,
    params: dict,
    board: dict,
    tables: dict[str, Table],
    state_keys: Sequence[str] = (),
    calibration: dict | None = None,
    force: bool = False,
    flush_s: float = 2.0,
    chip: str | None = None,
) -> Run:
    """Create a new run file and lock it; refuses an existing file unless `force`, and a file another process writes.

    `chip` names the chip (None: the simulated chip of a sim:// port in `board`, else not known).
    """
    p = Path(path)
    refusal = "use --force to overwrite or --resume to continue it"
    if p.exists() and not force:
        raise FileExistsError(f"{p} already exists ({refusal})")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"folder {p.parent} does not exist")
    lock = RunLock.acquire(p)
    try:
        remove_leftovers(p)
        with atomic_write(p, force=force, refusal=refusal) as tmp, h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update(RUN_FILE.stamp())
            f.attrs["procedure"] = procedure
            f.attrs["status"] = "running"
            f.attrs["created_utc"] = utc_now()
            f.attrs["software_version"] = software_version()
            f.attrs["host"] = socket.gethostname()
            f.attrs["params_json"] = json.dumps(params, default=_jsonable)
            f.attrs["board_json"] = json.dumps(board, default=_jsonable)
            f.attrs["calibration_json"] = json.dumps(calibration or {}, default=_jsonable)
            f.attrs["chip"] = RunIdentity.of(board, chip).chip
            f.attrs["resumed"] = 0
            dtypes = {name: t.dtype for name, t in tables.items()}
            _declare(f, dtypes, {name: t.doc for name, t in tables.items()}, list(state_keys))
        return _open_swmr(p, flush_s, lock)
    except BaseException:
        lock.release()
        raise


def _open_swmr(p: Path, flush_s: float, lock: RunLock) -> Run:
    f = h5py.File(p, "r+", libver="latest")
    try:
        checked = check_run(f, p, required=False)  # the declaration this process has just written
        f.swmr_mode = True
    except BaseException:
        f.close()
        raise
    return Run(p, f, flush_s, lock, checked)


def _open_readonly(p: Path, live_writer: bool = True) -> h5py.File:
    if not p.exists():
        raise FileNotFoundError(f"run file {p} does not exist")
    _check_superblock(p, _LIVE_WRITER_GRACE_S if live_writer else 0.0)
    try:
        return h5py.File(p, "r", locking=False, swmr=True)
    except (OSError, RuntimeError):  # h5py raises RuntimeError for some damaged superblocks
        try:
            return h5py.File(p, "r", locking=False)
        except (OSError, RuntimeError) as exc:
            raise RunFileError(f"{p} is not a readable HDF5 run file ({str(exc).splitlines()[0]})") from None


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SUPERBLOCK_PREFIX = 24  # enough of every superblock version to reach its size-of-offsets field


_LIVE_WRITER_GRACE_S = 1.0  # a live writer can be caught between its superblock and its data reaching the disk


def _check_superblock(p: Path, grace_s: float = _LIVE_WRITER_GRACE_S) -> None:
    """Compare the end of file the HDF5 superblock records with the file's real size, from its first bytes.

    Checked before libhdf5 sees the file: a SWMR reader retries metadata whose checksum fails (as it
    does past the end of a cut file) with back-off for up to an hour, so a truncated file must never
    reach it. A file still being written can be short for a moment, so a short file is looked at again
    for up to `grace_s` before it is called truncated (no wait when the caller holds the writer's lock).
    """
    deadline = time.monotonic() + grace_s
    while True:
        size, stored = _sizes(p)
        if stored is not None and size >= stored:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if stored is None:
        raise RunFileError(f"{p} is truncated: its {size} bytes end inside the HDF5 superblock")
    raise RunFileError(
        f"{p} is truncated ({size} of {stored} bytes, {stored - size} missing): copy it again from the source"
    )


def _sizes(p: Path) -> tuple[int, int | None]:
    """The file's size and the size its superblock records (None: the file ends inside the superblock).

    The signature sits at 0, 512, 1024, 2048, ... (after an optional user block).
    """
    size = p.stat().st_size
    if size == 0:
        raise RunFileError(f"{p} is empty (0 bytes): not a run file; write it again")
    with p.open("rb") as fh:
        offset = 0
        while offset + len(_HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                break
            offset = 512 if offset == 0 else offset * 2
        else:
            raise RunFileError(f"{p} is not a readable HDF5 run file (no HDF5 signature in its {size} bytes)")
        fh.seek(offset)
        head = fh.read(_SUPERBLOCK_PREFIX + 4 * 8)
    return size, _superblock_eof(head)


def _superblock_eof(head: bytes) -> int | None:
    """End-of-file address the superblock starting at `head` records: None if `head` is cut
    short, 0 (nothing to check; libhdf5 judges the file) for a layout this does not know."""
    if len(head) < _SUPERBLOCK_PREFIX:
        return None
    version = head[8]
    if version in (0, 1):
        n = head[13]  # size of offsets; v1 adds indexed-storage K and a reserved field before the addresses
        base_at = 24 + (4 if version == 1 else 0)
    elif version in (2, 3):
        n = head[9]
        base_at = 12
    else:
        return 0
    if n not in (2, 4, 8):
        return 0
    eof_at = base_at + 2 * n  # base address, free-space (v0/v1) or extension (v2/v3) address, end of file
    if eof_at + n > len(head):
        return None
    eof = int.from_bytes(head[eof_at : eof_at + n], "little")
    return 0 if eof == (1 << (8 * n)) - 1 else eof  # libhdf5 writes the whole file's size, user block included


def _check_not_truncated(f: h5py.File, p: Path) -> None:
    """A SWMR open does not check the end of file; a writer's flush sets the file's size to the end its
    superblock records and a killed writer only leaves more bytes behind, so a shorter file was cut short."""
    stored, actual = f.id.get_filesize(), p.stat().st_size
    if actual < stored:
        raise RunFileError(f"{p} is truncated ({actual} of {stored} bytes)")


def _check_format(f: h5py.File, p: Path) -> None:
    version = RUN_FILE.check(f.attrs, str(p), RunFileError)
    for key in ("procedure", "status", "params_json", "board_json"):
        if key not in f.attrs:
            raise RunFileError(f"{p} is corrupt: attribute {key!r} is missing")
    if version != "1.0" and "tables_json" not in f.attrs:
        raise RunFileError(f"{p} is corrupt: attribute 'tables_json' is missing; {RECOPY}")
    if not isinstance(f.get("data"), h5py.Group):
        raise RunFileError(f"{p} is corrupt: group 'data' is missing")


def _checked(f: h5py.File, p: Path) -> tuple[CheckedRun, dict[str, np.ndarray]]:
    """Format, structure, sizes and committed counts, then the committed records (one-line errors)."""
    try:
        _check_format(f, p)
        live = writer_pid(p) is not None  # another process writes it: a torn chunk read is read again
        checked = check_run(f, p, live=live)
        return checked, read_tables(f, p, checked.counts, live)
    except RunFileError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # damaged metadata
        raise RunFileError(f"{p} is corrupt: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def read_run(path: str | os.PathLike) -> RunData:
    """Load a run file (complete, interrupted or still being written) with validation and one-line errors."""
    p = Path(path)
    f = _open_readonly(p)
    try:
        checked, data = _checked(f, p)
        try:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            procedure = str(attrs["procedure"])
            return RunData(
                path=p,
                procedure=procedure,
                status=str(attrs["status"]),
                params=json.loads(attrs["params_json"]),
                board=json.loads(attrs["board_json"]),
                calibration=json.loads(attrs.get("calibration_json", "{}")),
                data=Tables(p, procedure, data),
                attrs=attrs,
                summary=json.loads(attrs.get("summary_json", "{}")),
                state={k: float(v) for k, v in zip(checked.state_keys, checked.state)},
            )
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise RunFileError(f"{p} is corrupt: {str(exc).splitlines()[0]}") from None
    finally:
        f.close()


def resume_run(
    path: str | os.PathLike,
    procedure: str,
    params: dict,
    flush_s: float = 2.0,
    *,
    board: dict | None = None,
    chip: str | None = None,
    tables: dict[str, Table] | None = None,
    state_keys: Sequence[str] | None = None,
) -> Run:
    """Continue an interrupted run: same procedure, parameters, board and chip; everything committed so far kept.

    `board` (the connected board's description) is checked against the board and chip the file records;
    `tables` and `state_keys` (the procedure's) against the file's, and those the file lacks are added empty.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"run file {p} does not exist")
    lock = RunLock.acquire(p)
    try:
        remove_leftovers(p)
        f = _open_readonly(p, live_writer=False)
        # The copy replaces the file only once it is complete (and after the original is closed);
        # on any error the original is left as it is.
        with atomic_write(p, force=True) as tmp:
            try:
                _check_not_truncated(f, p)
                _check_format(f, p)
                _check_resumable(f, p, procedure, params)
                if board is not None:
                    _check_identity(f, p, RunIdentity.of(board, chip))
                checked = check_run(f, p)
                dtypes = _resumed_tables(f, p, tables)
                data = read_tables(f, p, checked.counts)
                _copy_for_resume(f, tmp, checked, data, dtypes, tables or {}, state_keys)
            except RunFileError:
                raise
            except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # damaged metadata or data
                raise RunFileError(f"{p} is corrupt and cannot be resumed: {str(exc).splitlines()[0]}") from None
            finally:
                f.close()
        return _open_swmr(p, flush_s, lock)
    except BaseException:
        lock.release()
        raise


def _check_resumable(f: h5py.File, p: Path, procedure: str, params: dict) -> None:
    """Refuse a complete run, another procedure's run, or a run started with other parameters."""
    if f.attrs["status"] == "complete":
        raise RunFileError(f"{p} is already complete; nothing to resume")
    if f.attrs["procedure"] != procedure:
        raise RunFileError(f"{p} is a {f.attrs['procedure']!r} run, not {procedure!r}")
    stored = json.loads(f.attrs["params_json"])
    if stored != json.loads(json.dumps(params, default=_jsonable)):
        diff = sorted(k for k in set(stored) | set(params) if stored.get(k) != params.get(k))
        raise RunFileError(f"{p} was started with other parameters ({', '.join(diff)}); resume with the same ones")


def _check_identity(f: h5py.File, p: Path, now: RunIdentity) -> None:
    """Refuse a board or chip other than the one the run was recorded on (before any pulse)."""
    try:
        recorded = _identity(json.loads(f.attrs["board_json"]), f.attrs.get("chip"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise RunFileError(f"{p} is corrupt: attribute 'board_json' is unreadable ({exc}); {RECOPY}") from None
    if recorded.differs(now):
        raise RunFileError(
            f"{p} was recorded on {recorded}; this is {now}: resume on the board and chip that started it, "
            "or start a new run (--force replaces it)"
        )


def _resumed_tables(f: h5py.File, p: Path, tables: dict[str, Table] | None) -> dict[str, np.dtype]:
    """The tables of the resumed file: the file's own, plus the procedure's that it lacks (added empty).

    A table both have must have the same fields of the same types (array lengths come from the parameters
    and the board, both checked already, or from what the run found before its first pulse).
    """
    own = declared_dtypes(f, p) or {name: ds.dtype for name, ds in f["data"].items()}
    if tables is None:
        return own
    out = dict(own)
    for name, table in tables.items():
        want = table.dtype
        if name not in own:
            out[name] = want
            continue
        have = own[name]
        same = have.names == want.names and all(
            have.fields[k][0].base == want.fields[k][0].base  # type: ignore[index]
            and len(have.fields[k][0].shape) == len(want.fields[k][0].shape)  # type: ignore[index]
            for k in want.names or ()
        )
        if not same:
            raise RunFileError(
                f"{p}: table {name!r} was written with other fields than this software's {f.attrs['procedure']} "
                "writes; resume it with the rram-hil version that started it, or start a new run"
            )
    return out


def _copy_for_resume(
    f: h5py.File,
    tmp: Path,
    checked: CheckedRun,
    data: dict[str, np.ndarray],
    dtypes: dict[str, np.dtype],
    tables: dict[str, Table],
    state_keys: Sequence[str] | None,
) -> None:
    """Write the committed records of `f` into a clean file at `tmp` (format of today), counting one more resume."""
    keys = list(checked.state_keys)
    values = dict(zip(keys, (float(v) for v in checked.state)))
    for key in state_keys or ():  # keys of this software's procedure that the file lacks start at 0
        if key not in values:
            keys.append(key)
            values[key] = 0.0
    state = [values[k] for k in keys] or [0.0]
    docs = {name: str(f["data"][name].attrs.get("doc", "")) for name in f["data"]}
    docs.update({name: t.doc for name, t in tables.items() if name not in docs})
    with h5py.File(tmp, "w", libver="latest") as g:
        for k, v in f.attrs.items():
            if k not in ("tables_json", "state_keys"):
                g.attrs[k] = v
        g.attrs.update(RUN_FILE.stamp())
        if "chip" not in f.attrs:  # a 1.0 file: the chip its port names
            g.attrs["chip"] = _identity(json.loads(f.attrs["board_json"]), None).chip
        g.attrs["resumed"] = int(f.attrs.get("resumed", 0)) + 1
        _declare(g, dtypes, docs, keys, data, np.array(state, dtype=np.float64))
