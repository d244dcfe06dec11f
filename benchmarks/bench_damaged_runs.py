"""Benchmark: damaged run files through `rram plot`, `rram fit` and `rram characterize --resume` (issue 15, items 3, 9).

Each damage case of tests/hil/characterize/test_runfile_damage.py (a table resized to 2^44 rows, deleted,
replaced by other records, a committed count beyond its table, 16 bytes overwritten inside a checksummed
chunk) is applied to a form run of 16x16 cells; each command runs in a fresh process. Reported per case
and command: exit status, stderr lines, wall time and peak resident memory, next to the same command on
the intact file. The target: one line, within 5 s, no more memory than the intact file needs plus its size.

    python benchmarks/bench_damaged_runs.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the damage cases are the tests' own
from cli_peak import run_rram  # benchmarks/ beside this script

from tests.hil.characterize.test_runfile_damage import DAMAGE, _damage, _running_copy

PORT = "sim://?seed=1&rows=16&cols=16"
CELLS = "0:16,0:16"


def _run(argv: list[str], peak_file: Path, env: dict[str, str]) -> dict[str, Any]:
    r = run_rram(argv, peak_file, env)
    err = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("fitting ")]
    return {
        "rc": r.rc,
        "stderr_lines": len(err),
        "seconds": round(r.seconds, 2),
        "peak_rss_mib": round(r.peak_rss_mib, 1),
        "first_line": err[0][:160] if err else "",
    }


def _commands(path: Path, out: Path) -> dict[str, list[str]]:
    return {
        "plot": ["plot", str(path), "-o", str(out / "figs")],
        "fit": ["fit", str(path), "-o", str(out / "p.h5"), "--force"],
        "resume": ["characterize", "form", "--port", PORT, "--cells", CELLS, "-o", str(path), "--resume", "-q"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rram-bench-runs-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "RRAM_SIM_STATE_DIR": str(folder / "chips")}
        intact = folder / "intact.h5"
        subprocess.run(
            [sys.executable, "-c", "from hil.cli import main; main()", "characterize", "form", "--port", PORT]
            + ["--cells", CELLS, "-o", str(intact), "-q"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        running = _running_copy(intact, folder / "running.h5")
        peak = folder / "peak"
        rows: dict[str, Any] = {"file_bytes": intact.stat().st_size, "intact": {}, "damaged": {}}
        for command in ("plot", "fit"):
            rows["intact"][command] = _run(_commands(intact, folder)[command], peak, env)
        for how in DAMAGE:
            rows["damaged"][how] = {}
            for command in ("plot", "fit", "resume"):
                bad = _damage(running, folder / "bad.h5", how)
                rows["damaged"][how][command] = _run(_commands(bad, folder)[command], peak, env)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"form run of 16x16 cells, {rows['file_bytes']} bytes")
    for command, r in rows["intact"].items():
        print(f"  intact        {command:6s} rc {r['rc']}  {r['seconds']:5.2f} s  {r['peak_rss_mib']:6.1f} MiB")
    for how, by_command in rows["damaged"].items():
        for command, r in by_command.items():
            print(
                f"  {how:30s} {command:6s} rc {r['rc']}  lines {r['stderr_lines']}  {r['seconds']:5.2f} s  "
                f"{r['peak_rss_mib']:6.1f} MiB  {r['first_line'][-70:]}"
            )


if __name__ == "__main__":
    main()
