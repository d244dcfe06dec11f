"""Whole records only: a record counts once it is written whole, and the count commits with the resume state.

A write cut short (Ctrl-C between growing the table and writing its rows once left an all-zero record
that `--resume` counted as done) leaves no record; a process killed at any step of appending and
committing leaves on disk either the old count or the new one, each with exactly its records and the
state that was set with them. Appends are buffered: the rows reach the table as one block at each commit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hil.characterize.runfile import Table, create_run, read_run, resume_run

TABLE = Table({"t": ("f8", ()), "g": ("f8", (4,))})


def _record(i: int) -> np.ndarray:
    rec = np.zeros(1, dtype=TABLE.dtype)
    rec["t"], rec["g"] = i + 1.0, np.full(4, i + 1.0)
    return rec


def test_an_append_cut_short_leaves_no_record_and_resume_carries_on_after_the_last_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appended records reach the table as one block at a commit: an interrupt there, and at the close that
    follows (as a kill would), leaves the table grown but its new rows unwritten, and they are not counted."""
    out = tmp_path / "run.h5"
    real = h5py.Dataset.__setitem__

    def ctrl_c_before_the_rows_are_written(self: h5py.Dataset, key: object, value: object) -> None:
        if self.name == "/data/x":
            raise KeyboardInterrupt
        real(self, key, value)

    with pytest.raises(KeyboardInterrupt):
        with create_run(out, "probe", {}, {}, {"x": TABLE}) as w:
            for i in range(3):
                w.append("x", _record(i))
            w.flush()  # committed: 3 records
            monkeypatch.setattr(h5py.Dataset, "__setitem__", ctrl_c_before_the_rows_are_written)
            w.append("x", _record(3))
            assert w.count("x") == 4 and w.read_record("x", -1)["t"] == 4.0  # buffered, seen by the writer
            w.flush()  # the table has grown by one row when the interrupt comes
    monkeypatch.undo()
    with h5py.File(out, "r") as f:
        assert f["data/x"].shape == (4,)  # grown: the case this test is about
    rd = read_run(out)
    assert rd.data["x"]["t"].tolist() == [1.0, 2.0, 3.0]  # not a fourth, all-zero record
    with resume_run(out, "probe", {}) as w:  # the failed close let go of the lock
        assert w.count("x") == 3 and w.read_record("x", -1)["t"] == 3.0
        w.append("x", _record(3))
    assert read_run(out).data["x"]["t"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_a_write_cut_short_inside_a_run_is_written_over_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose block write failed once (a disk hiccup) keeps its records buffered: the next commit writes
    them over the rows it left, with no gap or stale row, and the writer counts and reads them all along."""
    out = tmp_path / "run.h5"
    real = h5py.Dataset.__setitem__
    calls = {"n": 0}

    def fails_once(self: h5py.Dataset, key: object, value: object) -> None:
        if self.name == "/data/x" and calls["n"] == 0:
            calls["n"] += 1
            raise OSError("disk hiccup")
        real(self, key, value)

    run = create_run(out, "probe", {}, {}, {"x": TABLE})
    with run as w:
        w.append("x", _record(0))
        w.flush()
        monkeypatch.setattr(h5py.Dataset, "__setitem__", fails_once)
        w.append("x", _record(1))
        with pytest.raises(OSError):
            w.flush()
        assert w.count("x") == 2 and w.read("x")["t"].tolist() == [1.0, 2.0]
        w.append("x", _record(2))
    run.complete({})
    rd = read_run(out)
    assert rd.data["x"]["t"].tolist() == [1.0, 2.0, 3.0]
    with h5py.File(out, "r") as f:
        assert f["data/x"].shape == (3,)


KILLER = """
import os, sys
from pathlib import Path
import h5py
import numpy as np
from hil.characterize.runfile import Table, create_run

table = Table({"t": ("f8", ()), "g": ("f8", (4,))})

def rec(i):
    r = np.zeros(1, dtype=table.dtype)
    r["t"], r["g"] = i + 1.0, np.full(4, i + 1.0)
    return r

def scenario(out, kill_at):
    steps = 0

    def step():
        nonlocal steps
        steps += 1
        if steps == kill_at:
            os._exit(9)  # as SIGKILL: no HDF5 close, no flush; what reached the OS is what the file holds

    def killable(cls, name):
        real = getattr(cls, name)
        def call(*args, **kwargs):
            step()
            result = real(*args, **kwargs)
            step()
            return result
        setattr(cls, name, call)

    w = create_run(out, "probe", {}, {}, {"x": table}, state_keys=["done"], flush_s=3600).__enter__()
    for i in range(10):
        w.append("x", rec(i))
    w.set_state(done=10)
    w.flush()  # committed: 10 records, state 10
    for cls, name in ((h5py.Dataset, "resize"), (h5py.Dataset, "__setitem__"), (h5py.File, "flush")):
        killable(cls, name)
    for i in range(10, 13):
        w.append("x", rec(i))
        w.set_state(done=i + 1)
    w.flush()  # committed: 13 records, state 13
    return steps

def child(out, kill_at):  # a process of its own per kill, forked from this one (imports done once)
    pid = os.fork()
    if pid == 0:
        steps = scenario(out, kill_at)
        Path(str(out) + ".steps").write_text(str(steps))
        os._exit(0)  # never closes the file: as a kill right after the last commit
    return os.waitpid(pid, 0)[1]

folder = Path(sys.argv[1])
child(folder / "0.h5", 0)
steps = int((folder / "0.h5.steps").read_text())
for k in range(1, steps + 1):
    status = child(folder / f"{k}.h5", k)
    assert os.waitstatus_to_exitcode(status) in (0, 9), status
print(steps)
"""


def test_a_kill_at_any_step_leaves_the_old_or_the_new_count_with_whole_records_and_their_state(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    steps = int(proc.stdout)  # steps before and after each h5py call of 3 appends and one commit
    assert steps == 2 * 5  # appends only buffer; the commit: grow, block write, flush, state write, flush
    seen = set()
    for step in range(1, steps + 1):
        rd = read_run(tmp_path / f"{step}.h5")
        n = len(rd.data["x"])
        assert n in (10, 13), (step, n)
        assert rd.data["x"]["t"].tolist() == [i + 1.0 for i in range(n)], step
        assert np.array_equal(rd.data["x"]["g"], np.repeat(rd.data["x"]["t"][:, None], 4, axis=1)), step
        assert rd.state == {"done": n}, step  # the state commits with the count
        seen.add(n)
    assert seen == {10, 13}  # both outcomes occur: before the commit, and after it


WRITER = """
import sys
import numpy as np
from hil.characterize.runfile import Table, create_run

table = Table({"t": ("f8", ()), "g": ("f8", (64,))})
with create_run(sys.argv[1], "probe", {}, {}, {"x": table}, flush_s=0.0) as w:  # a commit after every append
    print("open", flush=True)
    for i in range(int(sys.argv[2])):
        r = np.zeros(1, dtype=table.dtype)
        r["t"], r["g"] = i + 1.0, i + 1.0
        w.append("x", r)
"""


def test_a_reader_of_a_live_run_always_sees_whole_committed_records(tmp_path: Path) -> None:
    """Read while another process appends and commits as fast as it can: every read succeeds, counts only grow,
    and every record counted is whole (the counts are read before the tables, which the writer grows first)."""
    out = tmp_path / "run.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), "1500"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        last, reads = 0, 0
        while proc.poll() is None:
            x = read_run(out).data["x"]
            assert len(x) >= last and np.array_equal(x["t"], np.arange(1.0, len(x) + 1.0))
            assert np.array_equal(x["g"], np.repeat(x["t"][:, None], 64, axis=1))
            last, reads = len(x), reads + 1
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0 and reads >= 10 and len(read_run(out).data["x"]) == 1500
