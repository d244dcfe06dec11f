"""Benchmark: does `rram fit`'s spatial model find the simulator's spatially correlated gain field, and only it?

For each chip seed, with the field off and on (sim:// ``spatial=``, ``spatial_len=``): a throwaway chip is
formed and characterized by the real procedures (`form`, then `levels` on the same cells), the runs are fitted
as `rram fit` does (hil.pipeline.run_datasets.fit_runs), and the profile's spatial model (calibration
fit_spatial_map, fitted on the open-loop error map of the levels run) is scored:

- lam1: its largest eigenvalue in units of the map's per-cell variance (1 for errors that are truly white);
- p: a permutation test of lam1. The cells of the same error map are shuffled (seeded) and fitted again by
  the same fitter; p = (1 + #shuffles with lam1 >= observed) / (1 + #shuffles). Shuffling keeps every error
  and destroys only their positions, so under "no spatial structure" p is uniform: the fitter "finds nothing"
  when p > 0.01 and "finds a field" when p <= 0.01 (with 99 shuffles: lam1 above every shuffle);
- r1_ol, r1_wv: lag-1 correlation (rows and columns pooled) of the open-loop and of the write-verify errors
  (g - target of the healthy cells; the field is a gain, so write-verify should correct it).

    nice python benchmarks/bench_spatial_fit.py                        # seeds 1..6, 16x16, spatial=0.08, len 4
    nice python benchmarks/bench_spatial_fit.py --size 32 --sigma 0.05 --seeds 1,2,3
    nice python benchmarks/bench_spatial_fit.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calibration.datasets import ErrorMapDataset
from calibration.fit import FitOptions
from calibration.fit_spatial_map import fit_spatial_map, full_covariance, lag_autocovariance
from hil.characterize import get_procedure
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import read_run
from hil.hardware.board import Board
from hil.pipeline.run_datasets import fit_runs
from sim_backend.sim_url import make_sim_url


@dataclass(frozen=True)
class Score:
    """One chip's spatial fit (lam1 in units of the per-cell variance; correlations dimensionless)."""

    seed: int
    spatial: float
    lam1: float
    null_q99: float
    p: float
    explained: float
    r1_ol: float
    r1_wv: float
    seconds: float


def lag1(x: np.ndarray, use: np.ndarray) -> float:
    """Lag-1 correlation of map x over neighbour pairs where both cells are in `use` (mean over `use` removed)."""
    x = np.where(use, x - x[use].mean(), 0.0)
    pairs = (use[:, 1:] & use[:, :-1], use[1:] & use[:-1])
    prods = (x[:, 1:] * x[:, :-1], x[1:] * x[:-1])
    cov = sum(float(np.sum(p[m])) for p, m in zip(prods, pairs, strict=True)) / sum(int(m.sum()) for m in pairs)
    return cov / float(np.mean(x[use] ** 2))


def lam1_ratio(errors: np.ndarray, max_lag: int) -> float:
    """fit_spatial_map's largest eigenvalue over the per-cell variance, from its own kernel and matrix (values only).

    The same numbers fit_spatial_map computes (its lag kernel, its covariance matrix), with eigvalsh for the
    eigenvalues alone: a shuffle then costs a few ms. `score` checks it against fit_spatial_map itself.
    """
    x = errors - errors.mean()
    kernel = lag_autocovariance(x, max_lag)
    return float(np.linalg.eigvalsh(full_covariance(kernel, x.shape))[-1] / kernel[max_lag, max_lag])


def score(seed: int, size: int, sigma: float, length: float, shuffles: int, out: Path) -> Score:
    """Characterize one throwaway chip, fit it like `rram fit`, and score its spatial model."""
    t0 = time.perf_counter()
    field = {"spatial": sigma, "spatial_len": length} if sigma > 0 else {}
    cells = f"0:{size},0:{size}"
    paths = [out / f"form_{seed}_{sigma}.h5", out / f"levels_{seed}_{sigma}.h5"]
    with Board.open(make_sim_url(seed, size, size, persist=0, **field)) as board:
        for name, path, params in (
            ("form", paths[0], {"cells": cells}),
            ("levels", paths[1], {"cells": cells, "levels": 8, "read_times": "1"}),
        ):
            cls = get_procedure(name)
            run_procedure(cls(cls.Params(**params), board), path, quiet=True)
    opts = FitOptions()
    prof, ds = fit_runs(paths, options=opts)
    assert prof.spatial is not None and ds.error_map is not None, "the levels run gave no error map"
    errors = ds.error_map.errors
    fitted = fit_spatial_map(ErrorMapDataset(errors), opts.spatial_k, opts.spatial_max_lag, opts.full_cov_max_cells)
    lam1 = lam1_ratio(errors, opts.spatial_max_lag)
    assert np.isclose(lam1, fitted.eigvals[0] / (fitted.total_variance / errors.size), rtol=1e-9), "not the fit's lam1"
    rng = np.random.default_rng(seed)
    shape = errors.shape
    null = np.array(
        [lam1_ratio(rng.permutation(errors.ravel()).reshape(shape), opts.spatial_max_lag) for _ in range(shuffles)]
    )
    data = read_run(paths[1]).data
    wv, ol = data["verified"], data["open_loop"]
    healthy = (wv["status"] == 0).reshape(size, size)
    return Score(
        seed=seed,
        spatial=sigma,
        lam1=lam1,
        null_q99=float(np.quantile(null, 0.99)),
        p=float((1 + np.sum(null >= lam1)) / (1 + shuffles)),
        explained=fitted.explained_fraction,
        r1_ol=lag1((ol["g"] - ol["target"]).reshape(size, size), healthy),
        r1_wv=lag1((wv["g"] - wv["target"]).reshape(size, size), healthy),
        seconds=time.perf_counter() - t0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3,4,5,6", help="comma-separated chip seeds")
    ap.add_argument("--size", type=int, default=16, help="side of the characterized square (cells)")
    ap.add_argument(
        "--sigma", default="0.05,0.08", help="spatial= of the field-on chips (sd of ln gain), comma-separated"
    )
    ap.add_argument("--length", type=float, default=4.0, help="spatial_len= of the field-on chips (cells)")
    ap.add_argument("--shuffles", type=int, default=99, help="permutations of the null")
    ap.add_argument("--json", default=None, help="write every score to this file")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sigmas = [0.0, *(float(s) for s in args.sigma.split(","))]
    scores: list[Score] = []
    print(f"{args.size}x{args.size} cells, levels 8, fields spatial={args.sigma} spatial_len={args.length}")
    print(
        f"{'seed':>4} {'spatial':>7} {'lam1':>6} {'q99':>6} {'p':>6} {'expl %':>6} {'r1 OL':>6} {'r1 WV':>6} {'s':>5}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for sigma in sigmas:
                s = score(seed, args.size, sigma, args.length, args.shuffles, Path(tmp))
                scores.append(s)
                print(
                    f"{s.seed:>4} {s.spatial:>7.3f} {s.lam1:>6.2f} {s.null_q99:>6.2f} {s.p:>6.3f} "
                    f"{100 * s.explained:>6.1f} {s.r1_ol:>6.3f} {s.r1_wv:>6.3f} {s.seconds:>5.1f}"
                )
    for sigma in sigmas:
        rows = [s for s in scores if s.spatial == sigma]
        hits = sum((s.p > 0.01) if sigma == 0.0 else (s.p <= 0.01) for s in rows)
        what = "off: found nothing (p > 0.01)" if sigma == 0.0 else f"spatial={sigma}: found a field (p <= 0.01)"
        print(
            f"{what}: {hits}/{len(rows)}; mean lam1 {np.mean([s.lam1 for s in rows]):.2f}, "
            f"mean r1 open loop {np.mean([s.r1_ol for s in rows]):.3f}, write-verify {np.mean([s.r1_wv for s in rows]):.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(s) for s in scores], indent=2))


if __name__ == "__main__":
    main()
