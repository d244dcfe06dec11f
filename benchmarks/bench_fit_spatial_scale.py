"""Benchmark: `rram fit`'s spatial step at 16x16, 32x32 and 64x64 cells, before and after the partial eigensolvers.

The step (calibration.fit.fit_profile on an error map) is the permutation test `spatial_p_value` and then
`fit_spatial_map`. "before" is `fit_spatial_map_reference`, the fitter as it was, kept here: numpy's full
eigendecomposition of the n x n covariance up to 1024 cells (O(n^3)), eigsh on an ndimage operator above.
"after" is today's `fit_spatial_map`, which computes only the k kept pairs. Maps are a smooth anisotropic
field plus white noise, in siemens like the real ones; rounds are paired and interleaved (the order
alternates), on one BLAS thread. Also timed: the repeated-programming fit (`fit_spatial`, thin SVD before,
Lanczos for the kept pairs after) at 1000 repetitions of 32x32 cells.

    nice python benchmarks/bench_fit_spatial_scale.py               # 16, 32, 64; 7 rounds
    nice python benchmarks/bench_fit_spatial_scale.py --sizes 32,64 --rounds 11
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from scipy import ndimage, signal
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # installed with scikit-learn

from calibration import fit_spatial as fs
from calibration.datasets import ErrorMapDataset, SpatialDataset
from calibration.fit_spatial_map import fit_spatial_map, lag_autocovariance, spatial_p_value
from calibration.noise_terms import SpatialModel

FIELD = np.outer([0.5, 1.0, 1.0, 0.5], [0.3, 1.0, 0.3]) * 0.3e-6  # S; smoother along rows than along columns


def _full_covariance_reference(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sigma built entry by entry from the lag kernel (the builder before the block-Toeplitz one)."""
    m = kernel.shape[0] // 2
    r, c = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
    dr = r[None, :] - r[:, None]
    dc = c[None, :] - c[:, None]
    inside = (np.abs(dr) <= m) & (np.abs(dc) <= m)
    cov = np.zeros(dr.shape)
    cov[inside] = kernel[m + dr[inside], m + dc[inside]]
    return cov


def fit_spatial_map_reference(
    ds: ErrorMapDataset, k: int = 10, max_lag: int = 3, full_max_cells: int = 1024
) -> SpatialModel:
    """The one-map fitter before this change (reference): full eigh up to full_max_cells, eigsh above."""
    shape = ds.shape
    x = ds.errors - ds.errors.mean()
    kernel = lag_autocovariance(x, max_lag)
    n = shape[0] * shape[1]
    full = _full_covariance_reference(kernel, shape) if n <= full_max_cells else None
    k_eff = min(k, n - 1)
    if full is not None:
        w, v = np.linalg.eigh(full)
        w, v = w[::-1][:k_eff], v[:, ::-1][:, :k_eff]
    else:

        def matvec(u: np.ndarray) -> np.ndarray:
            return ndimage.correlate(np.asarray(u, dtype=np.float64).reshape(shape), kernel, mode="constant").ravel()

        op = LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)
        w, v = eigsh(op, k=k_eff, which="LA", v0=np.ones(n))
        order = np.argsort(w)[::-1]
        w, v = w[order], v[:, order]
    keep = w > 0
    w, v = w[keep], v[:, keep].copy()
    flip = np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
    v *= np.where(flip == 0, 1.0, flip)
    return SpatialModel(shape, w, v, 1, float(kernel[max_lag, max_lag] * n), full, "stationary", kernel)


def fit_spatial_reference(ds: SpatialDataset, k: int = 10, full_max_cells: int = 1024) -> SpatialModel:
    """The repeated-programming fitter before this change (reference): the thin SVD of every pair."""
    saved = fs.PARTIAL_MIN_SIZE
    fs.PARTIAL_MIN_SIZE = 10**12
    try:
        return fs.fit_spatial(ds, k, full_max_cells)
    finally:
        fs.PARTIAL_MIN_SIZE = saved


def error_map(size: int, seed: int) -> np.ndarray:
    """A size x size map in S: the smooth field plus white noise of 0.3 uS."""
    rng = np.random.default_rng(seed)
    field = signal.convolve2d(rng.standard_normal((size + 3, size + 2)), FIELD, mode="valid")
    return field + 0.3e-6 * rng.standard_normal((size, size))


def paired(
    before: Callable[[], SpatialModel], after: Callable[[], SpatialModel], rounds: int
) -> tuple[list[float], list[float], SpatialModel, SpatialModel]:
    """Seconds of each call over paired rounds whose order alternates, and the two fits of the last round."""
    times: dict[str, list[float]] = {"before": [], "after": []}
    fits: dict[str, SpatialModel] = {}
    runs = [("before", before), ("after", after)]
    for r in range(rounds):
        for name, fit in runs if r % 2 == 0 else runs[::-1]:
            t0 = time.perf_counter()
            fits[name] = fit()
            times[name].append(time.perf_counter() - t0)
    return times["before"], times["after"], fits["before"], fits["after"]


def agreement(a: SpatialModel, b: SpatialModel) -> tuple[float, float]:
    """Largest relative eigenvalue difference and largest 1 - |cos| between matching eigenvectors."""
    k = min(a.eigvals.size, b.eigvals.size)
    rel = float(np.max(np.abs(a.eigvals[:k] / b.eigvals[:k] - 1)))
    cos = np.abs(np.sum(a.eigvecs[:, :k] * b.eigvecs[:, :k], axis=0))
    return rel, float(np.max(1 - cos))


def row(label: str, before: list[float], after: list[float], extra: str = "") -> str:
    ratio = [b / a for b, a in zip(before, after, strict=True)]
    return (
        f"{label:>22} {min(before):9.3f} {statistics.median(before):9.3f} {min(after):9.4f} "
        f"{statistics.median(after):9.4f} {statistics.median(ratio):8.1f}x {extra}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,32,64", help="comma-separated array sides (cells)")
    ap.add_argument("--rounds", type=int, default=7, help="paired rounds per size")
    ap.add_argument("--k", type=int, default=10, help="kept pairs (FitOptions.spatial_k)")
    ap.add_argument("--repeats", type=int, default=1000, help="repetitions of the 32x32 repeated-programming fit")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    lines = []
    with threadpool_limits(1, user_api="blas"):
        for size in sizes:
            ds = ErrorMapDataset(error_map(size, seed=size))
            before, after, ref, new = paired(
                partial(fit_spatial_map_reference, ds, args.k), partial(fit_spatial_map, ds, args.k), args.rounds
            )
            step = []
            for _ in range(3):
                t0 = time.perf_counter()
                spatial_p_value(ds.errors, 3)
                step.append(time.perf_counter() - t0)
            rel, vec = agreement(new, ref)
            extra = f"p-value {statistics.median(step):.3f} s; eig rel {rel:.1e}, 1-cos {vec:.1e}"
            lines.append(row(f"map {size}x{size}", before, after, extra))
        rng = np.random.default_rng(0)
        factors = rng.standard_normal((1024, 5)) * np.array([3e-6, 2.4e-6, 1.8e-6, 1.3e-6, 0.9e-6])
        errors = rng.standard_normal((args.repeats, 5)) @ factors.T + 0.2e-6 * rng.standard_normal((args.repeats, 1024))
        reps = SpatialDataset(errors.reshape(args.repeats, 32, 32))
        before, after, ref, new = paired(
            partial(fit_spatial_reference, reps, args.k),
            partial(fs.fit_spatial, reps, args.k),
            max(3, args.rounds // 2),
        )
        rel, vec = agreement(new, ref)
        lines.append(row(f"repeats {args.repeats}x32x32", before, after, f"eig rel {rel:.1e}, 1-cos {vec:.1e}"))
    print(f"spatial fit, k={args.k}, max_lag 3, {args.rounds} paired interleaved rounds, 1 BLAS thread; seconds")
    print(f"{'':>22} {'before min':>9} {'med':>9} {'after min':>9} {'med':>9} {'speed-up':>9}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
