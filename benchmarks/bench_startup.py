"""Benchmark: start-up time of `rram` commands, as a ratio to importing the libraries every command needs.

Each command runs in a fresh process, the baseline (`python -c "import click, h5py, numpy"`) interleaved
with them round by round; the figure is the median over rounds (issue 13's target: `rram --help` <= 2x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

BASELINE = [sys.executable, "-c", "import click, h5py, numpy"]
COMMANDS = {
    "rram --help": ["--help"],
    "rram board info": ["board", "info", "--port", "sim://?seed=0&persist=0"],
    "rram characterize form --help": ["characterize", "form", "--help"],
}


def _seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"baseline": [], **{name: [] for name in COMMANDS}}
    for _ in range(args.rounds):
        times["baseline"].append(_seconds(BASELINE))
        for name, argv in COMMANDS.items():
            times[name].append(_seconds([sys.executable, "-m", "hil.cli", *argv]))
    base = statistics.median(times["baseline"])
    rows = {name: {"median_s": statistics.median(t), "ratio": statistics.median(t) / base} for name, t in times.items()}
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for name, r in rows.items():
        print(f"{name:32s} {r['median_s']:6.2f} s  {r['ratio']:5.2f}x")


if __name__ == "__main__":
    main()
