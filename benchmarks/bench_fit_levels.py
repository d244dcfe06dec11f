"""Benchmark: time to fit a levels dataset of 10^6 readings (programming model + the three paper families).

Run: python benchmarks/bench_fit_levels.py [--n 1000000] [--levels 16] [--repeats 3]
Prints the best-of-N wall time of each stage and of the whole fit_profile call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from calibration import synthetic as syn
from calibration.families import fit_families
from calibration.fit import fit_profile
from calibration.fit_programming import fit_programming

G_MAX = 40e-6


def _best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of readings")
    ap.add_argument("--levels", type=int, default=16, help="number of target levels")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    per_level = args.n // args.levels
    levels = np.linspace(2e-6, G_MAX, args.levels)
    ds = syn.programming(np.random.default_rng(0), levels, per_level, g_max=G_MAX)
    n = ds.g.size
    t_prog = _best(lambda: fit_programming(ds, G_MAX), args.repeats)
    t_fam = _best(lambda: fit_families(ds, G_MAX), args.repeats)
    t_all = _best(lambda: fit_profile(open_loop=ds), args.repeats)
    print(f"levels dataset: {n:,} readings, {args.levels} levels (best of {args.repeats})")
    print(f"  fit_programming (table + c0..c4 polynomials): {t_prog * 1e3:8.1f} ms")
    print(f"  fit_families (additive, lognormal, state_dependent; KS + AIC): {t_fam * 1e3:8.1f} ms")
    print(f"  fit_profile(open_loop=...) total: {t_all * 1e3:8.1f} ms  ({n / t_all / 1e6:.2f} M readings/s)")


if __name__ == "__main__":
    main()
