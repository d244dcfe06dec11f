"""Progress of long procedures: a bar only on a terminal; plain lines (start, stages, each ~10 %, end with
the elapsed time) on a pipe or log file, without carriage returns; nothing at all with --quiet."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from hil.characterize.procedure import Progress

REPO = Path(__file__).resolve().parents[3]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream: io.StringIO, quiet: bool = False) -> str:
    bar = Progress(50, "levels", quiet, unit="op", stream=stream, min_interval_s=0.0)
    bar.stage("gate calibration")
    for _ in range(50):
        bar.advance()
    bar.close()
    return stream.getvalue()


def test_a_pipe_gets_plain_lines_per_stage_and_tenth() -> None:
    text = _run(io.StringIO())
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert lines[0] == "levels: start, 50 op" and lines[1] == "levels: gate calibration"
    tenths = [ln for ln in lines if re.fullmatch(r"levels: \d+% \(\d+/50 op\), \d+\.\d s, about \d+\.\d s left", ln)]
    assert [int(ln.split(": ")[1].split("%")[0]) for ln in tenths] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert re.fullmatch(r"levels: done, 50/50 op in \d+\.\d s", lines[-1]) and len(lines) == 12


def test_a_short_run_on_a_pipe_gets_its_start_and_end_only() -> None:
    stream = io.StringIO()
    bar = Progress(50, "form", False, stream=stream)  # the default spacing: a line per second at most
    for _ in range(50):
        bar.advance()
    bar.close()
    assert [ln.split(",")[0] for ln in stream.getvalue().splitlines()] == ["form: start", "form: done"]


def test_an_interrupted_run_says_where_it_stopped() -> None:
    stream = io.StringIO()
    bar = Progress(10, "retention", False, stream=stream)
    bar.set(4)  # resumed with 4 done
    bar.advance()
    bar.close()
    assert stream.getvalue().splitlines()[-1].startswith("retention: stopped, 5/10 op in ")


def test_quiet_prints_nothing_on_a_pipe_or_a_terminal() -> None:
    assert _run(io.StringIO(), quiet=True) == "" and _run(_Terminal(), quiet=True) == ""


def test_a_terminal_gets_a_bar_with_rate_and_eta() -> None:
    text = _run(_Terminal())
    assert "\r" in text and "levels: gate calibration" in text and "op/s" in text
    assert "levels: start" not in text  # no plain lines on a terminal


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
