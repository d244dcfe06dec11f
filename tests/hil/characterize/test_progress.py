"""`rram characterize` reports its progress in the tenths style of `firmware_protocol.progress.Progress`
(its unit tests live in tests/firmware_protocol/test_progress.py): plain lines into a pipe, none with -q."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_the_command_writes_plain_lines_into_a_pipe(tmp_path: Path) -> None:
    """`rram characterize` with stderr a pipe: plain progress lines there, no carriage return; -q: none."""
    cmd = [sys.executable, "-c", "from hil.cli import main; main()", "characterize", "form"]
    cmd += ["--port", "sim://?seed=3&rows=16&cols=16", "--cells", "0:1,0:4"]
    r = subprocess.run([*cmd, "-o", str(tmp_path / "a.h5")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and r.stderr.startswith("form: start, 4 op\n") and "form: done, 4/4 op in" in r.stderr
    assert r.stdout.startswith("form: wrote ")
    q = subprocess.run(
        [*cmd, "-o", str(tmp_path / "b.h5"), "-q"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert q.returncode == 0 and q.stderr == ""
