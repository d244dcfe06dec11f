"""One `rram` command in a fresh process, with its exit status, stderr, wall time and peak resident memory.

Shared by the damaged-file benchmarks (bench_damaged_files.py, bench_damaged_runs.py), which compare a
command on a damaged file with the same command on the intact one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The command runs under this wrapper, which records the process's own peak RSS (VmHWM of its memory map; the
# rusage of a child started from this big process would count the parent's pages it held before exec).
_WRAPPER = """
import atexit, os, sys
def _peak():
    kib = [ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
    open(os.environ["PEAK_RSS_OUT"], "w").write(kib)
atexit.register(_peak)
sys.argv = ["rram", *sys.argv[1:]]
from hil.cli import main
main()
"""


@dataclass(frozen=True)
class CliRun:
    """What one `rram` process did: exit status, its stderr, wall seconds and peak RSS in MiB."""

    rc: int
    stderr: str
    seconds: float
    peak_rss_mib: float


def run_rram(argv: list[str], peak_file: Path, env: Mapping[str, str] | None = None) -> CliRun:
    """Run `rram ARGV` in a fresh process (environment `env`, default ours); `peak_file` receives its peak RSS."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**(os.environ if env is None else env), "PEAK_RSS_OUT": str(peak_file)},
    )
    seconds = time.perf_counter() - t0
    return CliRun(r.returncode, r.stderr, seconds, int(peak_file.read_text()) / 1024)
