"""Benchmark: closed-form endurance cycling of the simulated array (1e6 SET/RESET cycles x 1,024 cells, read every 1,000)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from sim_backend.device_model import RRAMArray


def run(n_cycles: int = 1_000_000, n_cells: int = 1024, read_every: int = 1000, seed: int = 0) -> dict[str, float]:
    """Form a square-ish array, cycle every cell and time the `cycle` call."""
    cols = int(np.ceil(np.sqrt(n_cells)))
    rows = int(np.ceil(n_cells / cols))
    array = RRAMArray(rows, cols, seed=seed)
    r, c = np.divmod(np.arange(n_cells), cols)
    array.form(r, c, 3.6, 1000.0, 1.0)
    t0 = time.perf_counter()
    res = array.cycle(r, c, n_cycles, read_every, 1.5, 100.0, 1.2, -1.5, 100.0, 3.0, 0.1)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "n_reads": float(res.cycles.size),
        "failed_frac": float(np.mean(res.failed_at >= 0)),
        "virtual_s": res.elapsed_s,
        "median_window_first": float(np.median(res.lrs_current[0]) / np.median(res.hrs_current[0])),
        "median_window_last": float(np.median(res.lrs_current[-1]) / np.median(res.hrs_current[-1])),
    }


def main() -> None:
    """Print the wall time of one endurance run."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=1_000_000)
    ap.add_argument("--cells", type=int, default=1024)
    ap.add_argument("--read-every", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = run(args.cycles, args.cells, args.read_every, args.seed)
    print(
        f"{args.cycles:.0e} cycles x {args.cells} cells, read every {args.read_every}: {out['seconds']:.2f} s wall "
        f"({int(out['n_reads'])} reads, {out['failed_frac']:.1%} cells worn out, {out['virtual_s']:.0f} s virtual, "
        f"median LRS/HRS window {out['median_window_first']:.1f}x -> {out['median_window_last']:.1f}x)"
    )


if __name__ == "__main__":
    main()
