"""The checks a run file passes before any of its data are used (read_run, resume, `rram fit`, `rram plot`).

Everything is judged from metadata and the file's size before a record is read: every table the file
declares (its `tables_json`, format 1.1; for 1.0 files the tables RUNFILE.md lists for the procedure)
is present with the declared record type, no table claims more bytes than the file holds, and the
committed record counts lie within the tables. Data are then read chunk by chunk, so a chunk whose
checksum fails is named with the records before it. Every failure is one RunFileError line naming the
file, the table and what to do next.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hil.characterize.region import parse_region

RECOPY = "copy it again from its source, or measure again"
CHANGED = f"the file was changed after it was written; {RECOPY}"
# A live writer rewrites the chunk it appends to (and `state`) at every commit; a read that overlaps that
# write sees a torn chunk whose checksum fails. Reading a live file retries this long before calling it damaged.
LIVE_RETRY_S = 1.0


class RunFileError(ValueError):
    """A run file is missing, not a run file, corrupt, from a newer format, or not resumable."""


# ------------------------------------------------------------------------------------ what 1.0 files hold
# The tables and fields every reader may rely on, per procedure (RUNFILE.md section 6; the minimum of
# every format version). A shape entry "n" is one value per cell of the region, "m" the 4 * points of an
# I-V sweep, "*" any length. Newer files declare their own tables exactly (`tables_json`) on top.
_Field = tuple[str, tuple[int | str, ...]]
_PROGRAM: dict[str, _Field] = {
    "cell": ("i4", (2,)),
    "level": ("i2", ()),
    "target": ("f8", ()),
    "g": ("f8", ()),
    "pulses": ("i4", ()),
    "status": ("u1", ()),
    "t": ("f8", ()),
}
_READS: dict[str, _Field] = {"t": ("f8", ()), "g": ("f8", ("n",))}
_GATE: dict[str, _Field] = {"gate": ("f8", ()), "g": ("f8", ("*",))}
REQUIRED: dict[str, dict[str, dict[str, _Field]]] = {
    "form": {
        "form": {
            "cell": ("i4", (2,)),
            "formed": ("u1", ()),
            "pulses": ("i4", ()),
            "v_form": ("f4", ()),
            "g_after": ("f8", ()),
            "t": ("f8", ()),
        }
    },
    "iv": {
        "iv": {"cell": ("i4", (2,)), "cycle": ("i4", ()), "v": ("f4", ("m",)), "i": ("f8", ("m",)), "t": ("f8", ())}
    },
    "endurance": {
        "endurance": {
            "cycle": ("i8", ()),
            "t": ("f8", ()),
            "lrs": ("f8", ("n",)),
            "hrs": ("f8", ("n",)),
            "lrs_code": ("u2", ("n",)),
            "hrs_code": ("u2", ("n",)),
        }
    },
    "retention": {"program": _PROGRAM, "reads": _READS},
    "levels": {
        "gate_cal": _GATE,
        "open_loop": _PROGRAM,
        "open_loop_reads": _READS,
        "verified": _PROGRAM,
        "verified_reads": _READS,
    },
    "read-noise": {"program": _PROGRAM, "reads": {**_READS, "code": ("u2", ("n",))}},
    "program": {
        "form": {"cell": ("i4", (2,)), "formed": ("u1", ()), "g": ("f8", ())},
        "gate_cal": _GATE,
        "tiles": {
            "tile": ("i4", ()),
            "target": ("f4", ("*",)),
            "verify": ("u1", ("*",)),
            "g_prog": ("f4", ("*",)),
            "pulses": ("i2", ("*",)),
            "status": ("u1", ("*",)),
            "g_read": ("f4", ("*",)),
            "t_prog": ("f8", ()),
            "t_read": ("f8", ()),
        },
    },
}
OPTIONAL: dict[str, dict[str, _Field]] = {"formed_check": {"t": ("f8", ()), "g": ("f8", ("n",))}}  # after 1.0 began


@dataclass(frozen=True)
class CheckedRun:
    """What the checks found: each table's committed records (declaration order) and the committed state."""

    counts: dict[str, int]
    state_keys: list[str]
    state: np.ndarray  # the state entries (max(1, len(state_keys)) of them)
    declared: bool  # the file declares its tables (format 1.1 and newer)


def declared_dtypes(f: h5py.File, p: Path) -> dict[str, np.dtype] | None:
    """The record type of every table the file declares (`tables_json`), in order; None for a 1.0 file."""
    if "tables_json" not in f.attrs:
        return None
    try:
        decl = json.loads(f.attrs["tables_json"])
        return {
            str(name): np.dtype(
                [(str(fn), np.dtype(str(dt)), tuple(int(s) for s in shape)) for fn, dt, shape in fields]
            )
            for name, fields in decl.items()
        }
    except (ValueError, TypeError, AttributeError) as exc:
        raise RunFileError(f"{p} is corrupt: its table declaration is unreadable ({exc}); {RECOPY}") from None


def check_run(f: h5py.File, p: Path, required: bool = True, live: bool = False) -> CheckedRun:
    """Every check that needs no record read: tables, record types, sizes, committed counts (one-line errors).

    `required`: also the tables and fields RUNFILE.md lists for the procedure (off for a writer's own new file).
    `live`: another process is writing the file (a failed checksum is read again, LIVE_RETRY_S).
    """
    declared = declared_dtypes(f, p)
    state_keys = _json_list(f, "state_keys", p)
    n_state = max(1, len(state_keys))
    # The committed counts before any table: a live writer writes records before the counts that count them,
    # so counts read now never exceed the extents read after them.
    n = n_state + (len(declared) if declared is not None else 0)
    state = _state(f, p, p.stat().st_size, n, live)
    data = f["data"]
    names = list(declared) if declared is not None else list(data.keys())
    for name in data:
        if declared is not None and name not in declared:
            raise RunFileError(f"{p}: table {name!r} is not declared by the file; {CHANGED}")
    tables: dict[str, h5py.Dataset] = {}
    for name in names:
        if name not in data:
            raise RunFileError(f"{p}: table {name!r} is missing (the file declares it); {CHANGED}")
        tables[name] = _table(data[name], name, p, None if declared is None else declared[name])
        if f.swmr_mode:  # a reader of a live file: the table as the writer last flushed it
            tables[name].refresh()
    if required:
        _check_required(f, p, tables)
    if declared is not None and state.size != n:
        raise RunFileError(f"{p} is corrupt: dataset 'state' has {state.size} entries, not {n}; {RECOPY}")
    size = p.stat().st_size  # after the tables' extents were read: a live writer's file only grows
    extents = {name: int(ds.shape[0]) for name, ds in tables.items()}
    for name, ds in tables.items():
        _check_extent(ds, name, extents[name], size, p)
    if declared is None:
        counts = extents
    else:
        counts = {}
        for name, value in zip(names, state[n_state:]):
            if not (np.isfinite(value) and value == int(value) and 0 <= value <= extents[name]):
                raise RunFileError(
                    f"{p}: table {name!r} has a committed count of {value:g} records, outside its {extents[name]}; {RECOPY}"
                )
            counts[name] = int(value)
    claimed = sum(counts[name] * ds.dtype.itemsize for name, ds in tables.items())
    if claimed > size:
        raise RunFileError(f"{p} is corrupt: its tables claim {claimed} bytes, more than the file's {size}; {RECOPY}")
    return CheckedRun(counts, state_keys, state[:n_state].copy(), declared is not None)


def _table(obj: object, name: str, p: Path, declared: np.dtype | None) -> h5py.Dataset:
    if not isinstance(obj, h5py.Dataset) or obj.ndim != 1 or obj.dtype.names is None:
        raise RunFileError(f"{p}: table {name!r} is not a 1-D table of records; {CHANGED}")
    if declared is not None and obj.dtype != declared:
        raise RunFileError(
            f"{p}: table {name!r} holds records of {_fields(obj.dtype)}, not the declared {_fields(declared)}; {CHANGED}"
        )
    return obj


def _check_extent(ds: h5py.Dataset, name: str, rows: int, size: int, p: Path) -> None:
    """A table's extent, times its record size, fits in the file (plus one chunk: a record in flight at a kill)."""
    itemsize = ds.dtype.itemsize
    slack = (ds.chunks[0] if ds.chunks else 0) * itemsize
    if rows * itemsize > size + slack:
        raise RunFileError(
            f"{p}: table {name!r} claims {rows} records ({rows * itemsize} bytes), more than the file's {size} bytes "
            f"can hold; {RECOPY}"
        )


def _check_required(f: h5py.File, p: Path, tables: Mapping[str, h5py.Dataset]) -> None:
    """The tables and fields RUNFILE.md lists for the file's procedure, with their types and shapes."""
    procedure = str(f.attrs["procedure"])
    spec = REQUIRED.get(procedure)
    if spec is None:  # another program's procedure: only its own declaration is known
        return
    params, board = _json_dict(f, "params_json", p), _json_dict(f, "board_json", p)
    sizes: dict[str, int] = {}
    for name, fields in {**spec, **{k: v for k, v in OPTIONAL.items() if k in tables}}.items():
        if name not in tables:
            raise RunFileError(f"{p}: table {name!r} is missing (a {procedure} run has it); {CHANGED}")
        dtype = tables[name].dtype
        for field, (code, shape) in fields.items():
            got = dtype.fields.get(field) if dtype.fields else None
            want = tuple(_dim(d, params, board, sizes, p) for d in shape)
            ok = got is not None and got[0].base == np.dtype(code) and len(got[0].shape) == len(want)
            ok = ok and all(w is None or g == w for g, w in zip(got[0].shape, want))  # type: ignore[index]
            if not ok:
                what = "no field" if got is None else f"field {field!r} of {_fields(got[0], field)}"
                raise RunFileError(
                    f"{p}: table {name!r} has {what} where a {procedure} run has {_spec_text(field, code, want)}; {CHANGED}"
                )


def _dim(d: int | str, params: dict, board: dict, sizes: dict[str, int], p: Path) -> int | None:
    """The length a shape entry stands for in this run (None: any)."""
    if isinstance(d, int):
        return d
    if d == "*":
        return None
    if d not in sizes:
        try:
            if d == "n":
                sizes[d] = parse_region(str(params["cells"]), int(board["rows"]), int(board["cols"])).n_cells
            else:
                sizes[d] = 4 * int(params["points"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RunFileError(f"{p} is corrupt: its parameters give no table size ({exc}); {RECOPY}") from None
    return sizes[d]


def _state(f: h5py.File, p: Path, size: int, n: int, live: bool) -> np.ndarray:
    """The `state` dataset (at least `n` float64 entries, none beyond what the file can hold)."""
    ds = f.get("state")
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype != np.float64:
        raise RunFileError(f"{p} is corrupt: dataset 'state' is missing or not 1-D float64; {RECOPY}")
    if ds.shape[0] * 8 > size or ds.shape[0] < n:
        raise RunFileError(f"{p} is corrupt: dataset 'state' has {ds.shape[0]} entries, not {n}; {RECOPY}")
    try:
        return np.asarray(_read(ds, slice(None), live), dtype=np.float64)
    except OSError as exc:
        raise RunFileError(f"{p}: dataset 'state' failed its checksum ({_first_line(exc)}); {RECOPY}") from None


def read_tables(f: h5py.File, p: Path, counts: Mapping[str, int], live: bool = False) -> dict[str, np.ndarray]:
    """The committed records of every table; a damaged chunk is one line naming the records before it."""
    return {name: read_table(f["data"][name], name, counts[name], p, live) for name in counts}


def read_table(ds: h5py.Dataset, name: str, n: int, p: Path, live: bool = False) -> np.ndarray:
    try:
        return _read(ds, slice(0, n), live)
    except OSError as exc:
        raise _damaged(ds, name, n, p, exc, live) from None


def _read(ds: h5py.Dataset, rows: slice, live: bool) -> np.ndarray:
    """`ds[rows]`; in a file another process writes, a failed read is tried again for up to LIVE_RETRY_S."""
    deadline = time.monotonic() + (LIVE_RETRY_S if live else 0.0)
    while True:
        try:
            return ds[rows]
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _damaged(ds: h5py.Dataset, name: str, n: int, p: Path, exc: OSError, live: bool) -> RunFileError:
    """The one-line error for a table whose read failed: which chunk, when the table has checksums."""
    if not ds.fletcher32 or not ds.chunks:
        return RunFileError(f"{p}: table {name!r} is unreadable ({_first_line(exc)}); {RECOPY}")
    step = ds.chunks[0]
    for start in range(0, n, step):
        end = min(n, start + step)
        try:
            _read(ds, slice(start, end), live)
        except OSError:
            return RunFileError(
                f"{p}: table {name!r} failed its checksum (chunk of records {start} to {end - 1} damaged); the "
                f"{start} records before it are intact, but the file is not used as it is: {RECOPY}"
            )
    return RunFileError(f"{p}: table {name!r} is unreadable ({_first_line(exc)}); {RECOPY}")


def _json_dict(f: h5py.File, key: str, p: Path) -> dict:
    value = _json(f, key, p)
    if not isinstance(value, dict):
        raise RunFileError(f"{p} is corrupt: attribute {key!r} is not a JSON object; {RECOPY}")
    return value


def _json_list(f: h5py.File, key: str, p: Path) -> list[str]:
    value = _json(f, key, p) if key in f.attrs else []
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise RunFileError(f"{p} is corrupt: attribute {key!r} is not a JSON list of names; {RECOPY}")
    return value


def _json(f: h5py.File, key: str, p: Path) -> object:
    try:
        return json.loads(f.attrs[key])
    except (KeyError, ValueError, TypeError) as exc:
        raise RunFileError(f"{p} is corrupt: attribute {key!r} is unreadable ({_first_line(exc)}); {RECOPY}") from None


def _fields(dtype: np.dtype, only: str | None = None) -> str:
    """A record type in words: 'g f8 (16,), t f8'."""
    if only is not None:
        return f"{dtype.base.str[1:]} {dtype.shape}" if dtype.shape else dtype.base.str[1:]
    parts = []
    for name in dtype.names or ():
        sub = dtype.fields[name][0]  # type: ignore[index]
        parts.append(f"{name} {sub.base.str[1:]}{f' {sub.shape}' if sub.shape else ''}")
    return "(" + ", ".join(parts) + ")"


def _spec_text(field: str, code: str, shape: tuple[int | None, ...]) -> str:
    dims = ", ".join("any" if d is None else str(d) for d in shape)
    return f"field {field!r} of {np.dtype(code).str[1:]}" + (
        f" ({dims}{',' if len(shape) == 1 else ''})" if shape else ""
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0] if text else type(exc).__name__
