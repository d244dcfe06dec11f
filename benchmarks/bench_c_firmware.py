"""Benchmark: the C board firmware (sim_backend/c_firmware.py) against the Python one on the same host-sim run.

Runs `benchmarks/bench_sim_ops.py`'s timed operations (1,000 READs, READ_BLOCKs, WRITE_VERIFY batches, an
ENDURANCE stream) on `FirmwareEngine` and on `CFirmwareEngine` in interleaved rounds, checks that both give
the same response bytes, and prints each figure per firmware. On the simulator the physics (numpy, in the
HAL callbacks) dominates both; the C core's own time per request is `make -C firmware_protocol/c bench`.

    python benchmarks/bench_c_firmware.py --rounds 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # run as `python benchmarks/bench_c_firmware.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sim_ops as b

from sim_backend.c_firmware import CFirmwareEngine

_FIGURES = (
    ("1,000 READs s", lambda r: r.reads_1000_s),
    ("READ_BLOCK 64x32 cell-ops/s", lambda r: r.read_block_cells_per_s["64x32"]),
    ("READ_BLOCK 8x8 cell-ops/s", lambda r: r.read_block_cells_per_s["8x8"]),
    ("WRITE_VERIFY 512 cell-ops/s", lambda r: r.wv_cell_ops_per_s),
    ("ENDURANCE 1e6 x 1024 s", lambda r: r.endurance_1e6x1024_s),
)


def main() -> None:
    """Interleaved rounds of the Python and the C firmware; medians per figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds takes a number >= 1, got {args.rounds}")
    b.ENGINES["c"] = CFirmwareEngine
    runs: dict[str, list[b.BenchResult]] = {"python": [], "c": []}
    for k in range(args.rounds):
        for name in ("fast", "c") if k % 2 == 0 else ("c", "fast"):
            runs["python" if name == "fast" else "c"].append(b.run(args.seed, name))
    same = all(p.payload_digest == c.payload_digest for p, c in zip(runs["python"], runs["c"]))
    print(f"{args.rounds} interleaved rounds; same response bytes from both firmwares: {'yes' if same else 'NO'}")
    print(f"{'figure':30} {'python median':>14} {'c median':>14}")
    for label, get in _FIGURES:
        py, c = (float(np.median([get(r) for r in runs[k]])) for k in ("python", "c"))
        scale = 1e6 if "cell-ops/s" in label else 1.0
        unit = " M" if scale > 1 else " s"
        print(f"{label:30} {py / scale:12.3f}{unit} {c / scale:12.3f}{unit}")
    if not same:
        raise SystemExit("the C firmware's responses differ from the Python firmware's")


if __name__ == "__main__":
    main()
