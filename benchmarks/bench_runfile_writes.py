"""Benchmark: the share of an endurance run spent writing run-file rows, buffered writer against row-by-row.

`rram characterize endurance` on a throwaway simulated chip (in process, the cells formed directly on the chip
as the tests do; the CLI adds only option parsing), run once with the run-file writer of today (records held in
memory, one block per table written at each commit) and once with `RowWriter`, the writer before it (one
resize and one write per record), kept here as the reference. Rounds are paired and interleaved (the order
alternates), each on a fresh chip of the same seed, with one BLAS thread; the records of the two runs are
checked to be identical. "Row writes" is the time inside the writer's `append` and `flush`, less the
procedure's per-record hook that `append` calls (the pulse ledger).

    nice python benchmarks/bench_runfile_writes.py                      # 32x32 cells, 1000 read points, 5 rounds
    nice python benchmarks/bench_runfile_writes.py --size 64 --cycles 5000 --read-every 10 --rounds 3
    nice python benchmarks/bench_runfile_writes.py --profile            # plus one cProfile run of each writer
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # installed with scikit-learn

from hil.characterize import runfile
from hil.characterize.endurance import Endurance, EnduranceParams
from hil.characterize.procedure import run_procedure
from hil.characterize.runcheck import CheckedRun
from hil.hardware.board import Board
from sim_backend.sim_url import make_sim_url


class RowWriter:
    """The run-file writer before buffering (reference): every append resizes its table and writes its rows.

    Same interface and the same file as `runfile.RunWriter`; its rows reach HDF5 at each append, its counts
    are committed at each flush.
    """

    def __init__(self, f: h5py.File, path: Path, flush_s: float, checked: CheckedRun):
        self._f = f
        self.path = path
        self.flush_s = flush_s
        self._last_flush = time.monotonic()
        self.on_append: Callable[[str], None] | None = None
        self._counts = dict(checked.counts)
        self._keys = list(checked.state_keys)
        self._state = checked.state.copy()

    def tables(self) -> list[str]:
        """Names of the tables the run file declares."""
        return list(self._counts)

    def count(self, name: str) -> int:
        """Records written so far to table `name`."""
        return self._counts[name]

    def append(self, name: str, records: np.ndarray | None = None, /, **values: object) -> None:
        """One record as keyword fields, or a structured array: grown into the table and written at once."""
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
        n, k = self._counts[name], records.shape[0]
        if ds.shape[0] < n + k:
            ds.resize(n + k, axis=0)
        ds[n : n + k] = records
        self._counts[name] = n + k
        if self.on_append is not None:
            self.on_append(name)
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def read(self, name: str) -> np.ndarray:
        """Every record of table `name` written so far."""
        return self._f["data"][name][: self._counts[name]]

    def read_record(self, name: str, index: int) -> np.void:
        """One record of table `name` (negative `index` counts from the end)."""
        n = self._counts[name]
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"table {name!r} has {n} records, no record {index}")
        return self._f["data"][name][i]

    def set_state(self, **values: float) -> None:
        """Resume state, committed at the next flush."""
        for k, v in values.items():
            if k not in self._keys:
                raise KeyError(f"state key {k!r} was not declared")
            self._state[self._keys.index(k)] = v

    def state(self, key: str) -> float:
        return float(self._state[self._keys.index(key)])

    def flush(self) -> None:
        """Commit: the records reach the file, then the counts and state (one chunk), then the file again."""
        self._f.flush()
        counts = np.array([float(n) for n in self._counts.values()])
        self._f["state"][...] = np.concatenate([self._state, counts])
        self._f.flush()
        self._last_flush = time.monotonic()


WRITERS: dict[str, type] = {"buffered": runfile.RunWriter, "rows": RowWriter}


def timed(base: type) -> type:
    """`base` with a clock on its row writes: time in `append` and `flush`, less the per-record hook's time."""

    class Timed(base):
        def __init__(self, *args: object) -> None:
            self.write_s = 0.0
            self.hook_s = 0.0
            self._depth = 0
            self._hook: Callable[[str], None] | None = None
            super().__init__(*args)

        @property
        def on_append(self) -> Callable[[str], None] | None:
            return self._hook

        @on_append.setter
        def on_append(self, fn: Callable[[str], None] | None) -> None:
            if fn is None:
                self._hook = None
                return

            def hook(name: str) -> None:
                t0 = time.perf_counter()
                try:
                    fn(name)
                finally:
                    self.hook_s += time.perf_counter() - t0

            self._hook = hook

        def append(self, name: str, records: np.ndarray | None = None, /, **values: object) -> None:
            self._depth += 1
            t0 = time.perf_counter()
            try:
                super().append(name, records, **values)
            finally:
                self._depth -= 1
                self.write_s += time.perf_counter() - t0

        def flush(self) -> None:
            if self._depth:  # a timed flush inside append: already on append's clock
                super().flush()
                return
            t0 = time.perf_counter()
            try:
                super().flush()
            finally:
                self.write_s += time.perf_counter() - t0

    return Timed


@contextmanager
def use_writer(cls: type) -> Iterator[list]:
    """Run files opened inside the block get a `cls` writer (`Run` builds `runfile.RunWriter`); yields them."""
    made: list = []
    real = runfile.RunWriter

    def build(*args: object) -> object:
        w = cls(*args)
        made.append(w)
        return w

    runfile.RunWriter = build  # type: ignore[misc,assignment]
    try:
        yield made
    finally:
        runfile.RunWriter = real  # type: ignore[misc]


@dataclass(frozen=True)
class Round:
    """One endurance run: wall time (s), time in row writes (s), read points written."""

    writer: str
    wall_s: float
    write_s: float
    records: int

    @property
    def share(self) -> float:
        return self.write_s / self.wall_s


def endurance(out: Path, writer: type, size: int, cycles: int, read_every: int, seed: int, flush_s: float) -> Round:
    """One endurance run of a fresh `size` x `size` chip (formed directly) into `out`, with writer class `writer`."""
    with Board.open(make_sim_url(seed, size, size, persist=0)) as board:
        engine = board.link.engine  # type: ignore[attr-defined]
        rr, cc = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        engine.array.form(rr.ravel(), cc.ravel(), 4.0, 1000, 1.0)
        params = EnduranceParams(cells=f"0:{size},0:{size}", cycles=cycles, read_every=read_every, skip_unformed=True)
        proc = Endurance(params, board)
        with use_writer(timed(writer)) as made:
            t0 = time.perf_counter()
            run_procedure(proc, out, quiet=True, flush_s=flush_s)
            wall = time.perf_counter() - t0
    name = next(k for k, v in WRITERS.items() if v is writer)
    return Round(name, wall, sum(w.write_s - w.hook_s for w in made), cycles // read_every)


def same_records(a: Path, b: Path) -> bool:
    """The two run files hold the same tables, bit for bit, and the same committed state."""
    ra, rb = runfile.read_run(a), runfile.read_run(b)
    if list(ra.data) != list(rb.data) or ra.state != rb.state:
        return False
    return all(ra.data[k].dtype == rb.data[k].dtype and ra.data[k].tobytes() == rb.data[k].tobytes() for k in ra.data)


def profile(out: Path, writer: type, args: argparse.Namespace) -> str:
    """cProfile of one run: the writer's entries and the h5py calls under them."""
    pr = cProfile.Profile()
    pr.enable()
    endurance(out, writer, args.size, args.cycles, args.read_every, args.seed, args.flush_s)
    pr.disable()
    text = io.StringIO()
    stats = pstats.Stats(pr, stream=text)
    stats.sort_stats("cumulative").print_stats(r"runfile|bench_runfile|h5py/_hl/(dataset|files|group)", 12)
    return text.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32, help="side of the cycled square (cells)")
    ap.add_argument("--cycles", type=int, default=20_000)
    ap.add_argument("--read-every", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds (each runs both writers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flush-s", type=float, default=2.0, help="commit interval, as rram characterize --flush-s")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one run of each writer")
    args = ap.parse_args()
    rounds: dict[str, list[Round]] = {name: [] for name in WRITERS}
    with threadpool_limits(1), tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(WRITERS) if r % 2 == 0 else list(WRITERS)[::-1]
            for name in order:
                out = Path(tmp) / f"{name}_{r}.h5"
                rounds[name].append(
                    endurance(out, WRITERS[name], args.size, args.cycles, args.read_every, args.seed, args.flush_s)
                )
            if r == 0:
                assert same_records(Path(tmp) / "buffered_0.h5", Path(tmp) / "rows_0.h5"), "the writers' records differ"
        if args.profile:
            for name, cls in WRITERS.items():
                print(f"--- cProfile, {name} writer")
                print(profile(Path(tmp) / f"profile_{name}.h5", cls, args))
    n = rounds["rows"][0].records
    print(
        f"endurance {args.size}x{args.size} cells, {args.cycles} cycles, read every {args.read_every} "
        f"({n} read points), flush every {args.flush_s:g} s; {args.rounds} paired rounds, 1 BLAS thread"
    )
    print(f"{'writer':>9} {'wall min':>9} {'wall med':>9} {'writes min':>10} {'writes med':>10} {'share med':>9}")
    for name, rs in rounds.items():
        wall = [x.wall_s for x in rs]
        writes = [x.write_s for x in rs]
        share = statistics.median(x.share for x in rs)
        print(
            f"{name:>9} {min(wall):8.2f}s {statistics.median(wall):8.2f}s {min(writes):9.3f}s "
            f"{statistics.median(writes):9.3f}s {share:8.1%}"
        )
    ratio = [a.wall_s / b.wall_s for a, b in zip(rounds["rows"], rounds["buffered"], strict=True)]
    print(f"paired wall ratio rows/buffered: median {statistics.median(ratio):.2f}x (min {min(ratio):.2f}x)")
    print("records identical (round 0): yes")


if __name__ == "__main__":
    main()
