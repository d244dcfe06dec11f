"""Run files: one HDF5 file per characterization run, crash-safe and resumable (schema in RUNFILE.md).

Every table a procedure writes is declared when the run is created; the file is then switched to
HDF5 single-writer/multiple-reader (SWMR) mode, in which appended data reach the disk in an order
that keeps the file readable if the process dies. Data are flushed at least every `flush_s` seconds.
A run that was interrupted keeps status "running"; `resume_run` copies what was flushed into a clean
file and carries on appending, so the finished file has the same content as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from firmware_protocol.fileformat import FileFormat, atomic_write, software_version, utc_now

RUN_FILE = FileFormat("rram-hil-run", "1.0", "an rram-hil run file")
FORMAT_NAME = RUN_FILE.name
FORMAT_VERSION = RUN_FILE.version


class RunFileError(ValueError):
    """A run file is missing, not a run file, corrupt, from a newer format, or not resumable."""


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


@dataclass
class RunData:
    """Everything a run file holds, loaded into memory."""

    path: Path
    procedure: str
    status: str
    params: dict
    board: dict
    calibration: dict
    data: dict[str, np.ndarray]
    attrs: dict
    summary: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"


class RunWriter:
    """Appends rows to the declared datasets of an open run; flushes on a timer."""

    def __init__(self, f: h5py.File, path: Path, flush_s: float):
        self._f = f
        self.path = path
        self.flush_s = flush_s
        self._last_flush = time.monotonic()

    def count(self, name: str) -> int:
        """Records written so far to table `name`."""
        return int(self._f["data"][name].shape[0])

    def append(self, name: str, records: np.ndarray | None = None, **values: object) -> None:
        """Append one record given as keyword fields, or a structured array of records."""
        ds = self._f["data"][name]
        if records is None:
            missing = set(ds.dtype.names) - set(values)
            extra = set(values) - set(ds.dtype.names)
            if missing or extra:
                raise ValueError(f"table {name!r}: missing fields {sorted(missing)}, unknown fields {sorted(extra)}")
            rec = np.zeros(1, dtype=ds.dtype)
            for k, v in values.items():
                rec[k][0] = v
            records = rec
        records = np.asarray(records)
        if records.dtype != ds.dtype:
            raise ValueError(f"table {name!r} takes records of dtype {ds.dtype}, got {records.dtype}")
        n = ds.shape[0]
        ds.resize(n + records.shape[0], axis=0)
        ds[n:] = records
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def read(self, name: str) -> np.ndarray:
        return self._f["data"][name][...]

    def set_state(self, **values: float) -> None:
        """Small numeric resume state (e.g. the board time at which programming ended)."""
        keys = json.loads(self._f.attrs["state_keys"])
        ds = self._f["state"]
        for k, v in values.items():
            if k not in keys:
                raise KeyError(f"state key {k!r} was not declared")
            ds[keys.index(k)] = v

    def state(self, key: str) -> float:
        keys = json.loads(self._f.attrs["state_keys"])
        return float(self._f["state"][keys.index(key)])

    def flush(self) -> None:
        self._f.flush()
        self._last_flush = time.monotonic()


class Run:
    """Context manager around one run file being written (created anew or resumed)."""

    def __init__(self, path: Path, f: h5py.File, flush_s: float):
        self.path = path
        self._f = f
        self.writer = RunWriter(f, path, flush_s)
        self._finished = False

    def __enter__(self) -> RunWriter:
        return self.writer

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(complete=False)

    def complete(self, summary: dict) -> None:
        """Mark the run complete with a summary (reopens the file outside SWMR to write attributes)."""
        if self._f.id.valid:
            self._f.flush()
            self._f.close()
        with h5py.File(self.path, "r+") as f:
            f.attrs["status"] = "complete"
            f.attrs["completed_utc"] = utc_now()
            f.attrs["summary_json"] = json.dumps(summary, default=_jsonable)
        self._finished = True

    def close(self, complete: bool = False) -> None:
        if self._finished:
            return
        try:
            if self._f.id.valid:
                self._f.flush()
                self._f.close()
        finally:
            self._finished = True


def _jsonable(x: object) -> object:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot store {type(x).__name__} in a run file")


def _declare(f: h5py.File, tables: dict[str, Table], state_keys: list[str]) -> None:
    g = f.create_group("data")
    for name, table in tables.items():
        dt = table.dtype
        chunk_rows = max(1, min(4096, (1 << 16) // max(1, dt.itemsize)))
        ds = g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(chunk_rows,))
        ds.attrs["doc"] = table.doc
    f.create_dataset("state", data=np.zeros(max(1, len(state_keys))))
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
) -> Run:
    """Create a new run file; refuses to overwrite an existing file unless `force`."""
    p = Path(path)
    refusal = "use --force to overwrite or --resume to continue it"
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
        f.attrs["resumed"] = 0
        _declare(f, tables, list(state_keys))
    return _open_swmr(p, flush_s)


def _open_swmr(p: Path, flush_s: float) -> Run:
    f = h5py.File(p, "r+", libver="latest")
    f.swmr_mode = True
    return Run(p, f, flush_s)


def _open_readonly(p: Path) -> h5py.File:
    if not p.exists():
        raise FileNotFoundError(f"run file {p} does not exist")
    _check_superblock(p)
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


def _check_superblock(p: Path) -> None:
    """Compare the end of file the HDF5 superblock records with the file's real size, from its first bytes.

    Checked before libhdf5 sees the file: a SWMR reader retries metadata whose checksum fails (as it
    does past the end of a cut file) with back-off for up to an hour, so a truncated file must never
    reach it. A file still being written can be short for a moment, so a short file is looked at again
    for up to `_LIVE_WRITER_GRACE_S` before it is called truncated.
    """
    deadline = time.monotonic() + _LIVE_WRITER_GRACE_S
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


def _check_sizes(f: h5py.File, p: Path) -> None:
    """Refuse tables whose recorded shapes hold more bytes than the whole file (run files are not compressed
    and every row is written), so a damaged shape never makes the reader allocate beyond the file's size."""
    size = p.stat().st_size
    claimed = sum(int(ds.size) * ds.dtype.itemsize for ds in f["data"].values())
    if claimed > size:
        raise RunFileError(f"{p} is corrupt: its tables claim {claimed} bytes, more than the file's {size}")


def _check_format(f: h5py.File, p: Path) -> None:
    RUN_FILE.check(f.attrs, str(p), RunFileError)
    for key in ("procedure", "status", "params_json", "board_json"):
        if key not in f.attrs:
            raise RunFileError(f"{p} is corrupt: attribute {key!r} is missing")
    if "data" not in f:
        raise RunFileError(f"{p} is corrupt: group 'data' is missing")


def read_run(path: str | os.PathLike) -> RunData:
    """Load a run file (complete or interrupted) with validation and one-line errors."""
    p = Path(path)
    f = _open_readonly(p)
    try:
        try:
            _check_format(f, p)
        except (OSError, RuntimeError) as exc:  # damaged metadata (e.g. a truncated file)
            raise RunFileError(f"{p} is corrupt: {str(exc).splitlines()[0]}") from None
        try:
            _check_sizes(f, p)
            data = {name: ds[...] for name, ds in f["data"].items()}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            return RunData(
                path=p,
                procedure=str(attrs["procedure"]),
                status=str(attrs["status"]),
                params=json.loads(attrs["params_json"]),
                board=json.loads(attrs["board_json"]),
                calibration=json.loads(attrs.get("calibration_json", "{}")),
                data=data,
                attrs=attrs,
                summary=json.loads(attrs.get("summary_json", "{}")),
            )
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise RunFileError(f"{p} is corrupt: {str(exc).splitlines()[0]}") from None
    finally:
        f.close()


def resume_run(path: str | os.PathLike, procedure: str, params: dict, flush_s: float = 2.0) -> Run:
    """Continue an interrupted run: same procedure and parameters, everything flushed so far kept."""
    p = Path(path)
    f = _open_readonly(p)
    # The copy replaces the file only once it is complete (and after the original is closed);
    # on any error the original is left as it is.
    with atomic_write(p, force=True) as tmp:
        try:
            _check_not_truncated(f, p)
            _check_format(f, p)
            _check_resumable(f, p, procedure, params)
            _copy_for_resume(f, tmp)
        except RunFileError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError) as exc:  # damaged metadata or data
            raise RunFileError(f"{p} is corrupt and cannot be resumed: {str(exc).splitlines()[0]}") from None
        finally:
            f.close()
    return _open_swmr(p, flush_s)


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


def _copy_for_resume(f: h5py.File, tmp: Path) -> None:
    """Write everything flushed to `f` into a clean file at `tmp`, counting one more resume."""
    with h5py.File(tmp, "w", libver="latest") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        g.attrs["resumed"] = int(f.attrs.get("resumed", 0)) + 1
        data = g.create_group("data")
        for name, ds in f["data"].items():
            new = data.create_dataset(name, data=ds[...], maxshape=(None,), chunks=ds.chunks)
            for k, v in ds.attrs.items():
                new.attrs[k] = v
        g.create_dataset("state", data=f["state"][...])
