"""Buffered run-file writes: records wait in memory and reach each table as one block per commit.

The files are bit for bit those of the row-by-row writer (`RowWriter` in benchmarks/bench_runfile_writes.py, the
writer before buffering); the writer counts and reads back what it buffered; a table's buffer is written (not
committed) once it passes its byte limit; and a kill loses only the records appended since the last commit, which
came at most `flush_s` after the one before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from hil.characterize import get_procedure, runfile
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import RunFileError, Table, create_run, read_run
from hil.hardware.board import Board
from sim_backend.sim_url import make_sim_url

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_runfile_writes import RowWriter  # noqa: E402

TABLE = Table({"t": ("f8", ()), "g": ("f8", (4,))})


def _record(i: int) -> np.ndarray:
    rec = np.zeros(1, dtype=TABLE.dtype)
    rec["t"], rec["g"] = i + 1.0, np.full(4, i + 1.0)
    return rec


def _measure(out: Path, name: str, cells: str, flush_s: float, **params: Any) -> None:
    """Run procedure `name` on a fresh simulated chip of seed 3 (its region formed directly on the chip)."""
    with Board.open(make_sim_url(3, 8, 8, persist=0)) as board:
        (r0, r1), (c0, c1) = (tuple(int(x) for x in part.split(":")) for part in cells.split(","))
        rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        board.link.engine.array.form(rr.ravel(), cc.ravel(), 4.0, 1000, 1.0)  # type: ignore[attr-defined]
        cls = get_procedure(name)
        run_procedure(cls(cls.Params(cells=cells, **params), board), out, quiet=True, flush_s=flush_s)


def _content(path: Path) -> dict[str, object]:
    """Every dataset of a run file as (dtype, shape, chunks, bytes), and its attributes but the two times."""
    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype, obj.shape, obj.chunks, obj.fletcher32, obj[()].tobytes())

        f.visititems(visit)
        out["attrs"] = {k: v for k, v in f.attrs.items() if k not in ("created_utc", "completed_utc")}
    return out


@pytest.mark.parametrize(
    ("name", "table", "cells", "params"),
    [
        ("endurance", "endurance", "0:4,0:8", {"cycles": 400, "read_every": 8, "skip_unformed": True}),
        # levels reads its own gate calibration and program tables back (w.read) while they are buffered
        ("levels", "verified", "0:2,0:4", {"levels": 4, "read_times": "1,10", "gate_points": 4, "cal_cells": 4}),
    ],
)
@pytest.mark.parametrize("flush_s", [0.0, 3600.0])  # a commit per record; one commit, at the close
def test_files_are_bit_for_bit_those_of_the_row_by_row_writer(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    table: str,
    cells: str,
    params: dict[str, Any],
    flush_s: float,
) -> None:
    _measure(tmp_path / "buffered.h5", name, cells, flush_s, **params)
    monkeypatch.setattr(runfile, "RunWriter", RowWriter)  # `Run` builds its writer from the module's name
    _measure(tmp_path / "rows.h5", name, cells, flush_s, **params)
    monkeypatch.undo()
    buffered, rows = _content(tmp_path / "buffered.h5"), _content(tmp_path / "rows.h5")
    assert list(buffered) == list(rows) and len(read_run(tmp_path / "rows.h5").data[table]) > 1
    for key in rows:
        assert buffered[key] == rows[key], key


def test_the_writer_counts_and_reads_buffered_and_written_records_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a byte limit of 3 records a table's buffer is written (not committed) as it fills: 10 one-record
    appends make 3 block writes before any commit, and every view of the writer sees the 10 records in order."""
    monkeypatch.setattr(runfile, "_MAX_BUFFERED_BYTES", 3 * TABLE.dtype.itemsize)
    real = h5py.Dataset.__setitem__
    writes: list[object] = []

    def spy(self: h5py.Dataset, key: object, value: object) -> None:
        if self.name == "/data/x":
            writes.append(key)
        real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", spy)
    out = tmp_path / "run.h5"
    run = create_run(out, "probe", {}, {}, {"x": TABLE}, flush_s=3600)
    with run as w:
        for i in range(10):
            if i % 2:
                w.append("x", _record(i))
            else:
                w.append("x", t=i + 1.0, g=np.full(4, i + 1.0))
            assert w.count("x") == i + 1
            assert w.read("x")["t"].tolist() == [j + 1.0 for j in range(i + 1)]
            every = range(-i - 1, i + 1)  # from the end, then from the start
            assert [w.read_record("x", j)["t"] for j in every] == [j % (i + 1) + 1.0 for j in every]
        assert writes == [slice(0, 3), slice(3, 6), slice(6, 9)]  # blocks of 3, none committed yet
        record = w.read_record("x", -1)
        record["t"] = -1.0  # a copy: the buffered record is not changed
        assert w.read_record("x", 9)["t"] == 10.0
        with pytest.raises(IndexError, match="has 10 records, no record 10"):
            w.read_record("x", 10)
        with pytest.raises(KeyError, match="table 'y' was not declared"):
            w.append("y", _record(0))
        with pytest.raises(ValueError, match="missing fields"):
            w.append("x", t=1.0)
        assert w.count("x") == 10  # a refused append leaves no record
    run.complete({})
    assert writes[-1] == slice(9, 10)  # the close wrote the last one
    x = read_run(out).data["x"]
    assert x["t"].tolist() == [i + 1.0 for i in range(10)] and np.array_equal(x["g"], np.repeat(x["t"][:, None], 4, 1))


KILLED_WRITER = """
import os, struct, sys, time
import numpy as np
from hil.characterize.runfile import Table, create_run

table = Table({"i": ("i8", ()), "g": ("f8", (256,))})
out, log, flush_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
with create_run(out, "probe", {}, {}, {"x": table}, flush_s=flush_s) as w:
    print("open", flush=True)
    i = 0
    while True:
        r = np.zeros(1, dtype=table.dtype)
        r["i"], r["g"] = i, float(i)
        os.pwrite(fd, struct.pack("<dd", time.monotonic(), 0.0), 16 * i)  # reaches the page cache: kept at a kill
        w.append("x", r)
        os.pwrite(fd, struct.pack("<d", time.monotonic()), 16 * i + 8)
        i += 1
        time.sleep(0.001)
"""


def test_a_kill_mid_run_loses_only_what_was_appended_within_flush_s_of_the_last_commit(tmp_path: Path) -> None:
    """SIGKILL a writer appending every ~1 ms with commits every 0.25 s, at a seeded moment after its third commit.

    The writer logs (monotonic clock, page cache: a kill keeps it) when each append began and returned. A commit
    comes at the first append at least flush_s after the previous commit ended, so every record lost (appended,
    not committed) but the one the kill interrupted began less than flush_s after the append that committed
    the last record counted returned: no timing slack is needed, however loaded the machine.
    """
    flush_s = 0.25
    out, log = tmp_path / "run.h5", tmp_path / "appends.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out), str(log), str(flush_s)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        opened = time.monotonic()
        deadline = opened + 60
        while time.monotonic() < deadline:
            try:
                if time.monotonic() - opened > 3 * flush_s and len(read_run(out).data["x"]) > 0:
                    break
            except (RunFileError, OSError):  # caught between the writer's superblock and its data: look again
                pass
            time.sleep(0.02)
        time.sleep(np.random.default_rng(7).uniform(0, flush_s))
        assert proc.poll() is None, "the writer stopped before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    x = read_run(out).data["x"]
    n = len(x)
    assert n > 0 and np.array_equal(x["i"], np.arange(n))  # whole records, in order
    assert np.array_equal(x["g"], np.repeat(x["i"][:, None].astype(float), 256, axis=1))
    raw = log.read_bytes()
    times = np.frombuffer(raw[: len(raw) // 16 * 16], dtype="<f8").reshape(-1, 2)  # (began, returned) per append
    assert times.shape[0] >= n and np.all(times[:n, 0] > 0)
    lost = times[n:-1, 0]  # appended after the last record counted, but the one the kill interrupted
    if lost.size:
        committed_at = times[n - 1, 1]  # the append of record n-1 returned after the commit that counted it
        assert committed_at > 0
        assert np.all(lost < committed_at + flush_s), (lost.max() - committed_at, flush_s)
