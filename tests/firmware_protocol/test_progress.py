"""Progress: a tqdm bar with rate and ETA on a terminal; plain lines (no carriage returns) anywhere else,
in the periodic style (training, Monte Carlo, planning) or the tenths style (characterization procedures:
start, stages, each ~10 %, end with the elapsed time); nothing at all when disabled."""

from __future__ import annotations

import io
import re

import pytest

from firmware_protocol.progress import Progress, is_terminal


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_tenths(stream: io.StringIO, quiet: bool = False) -> str:
    bar = Progress(50, "levels", "op", enabled=not quiet, tenths=True, stream=stream, min_interval_s=0.0)
    bar.stage("gate calibration")
    for _ in range(50):
        bar.advance()
    bar.close()
    return stream.getvalue()


# --- the tenths style (characterization procedures) -------------------------------------------------------


def test_a_pipe_gets_plain_lines_per_stage_and_tenth() -> None:
    text = _run_tenths(io.StringIO())
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert lines[0] == "levels: start, 50 op" and lines[1] == "levels: gate calibration"
    tenths = [ln for ln in lines if re.fullmatch(r"levels: \d+% \(\d+/50 op\), \d+\.\d s, about \d+\.\d s left", ln)]
    assert [int(ln.split(": ")[1].split("%")[0]) for ln in tenths] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert re.fullmatch(r"levels: done, 50/50 op in \d+\.\d s", lines[-1]) and len(lines) == 12


def test_a_short_run_on_a_pipe_gets_its_start_and_end_only() -> None:
    stream = io.StringIO()
    bar = Progress(50, "form", "op", tenths=True, stream=stream)  # the default spacing: a line per second at most
    for _ in range(50):
        bar.advance()
    bar.close()
    assert [ln.split(",")[0] for ln in stream.getvalue().splitlines()] == ["form: start", "form: done"]


def test_an_interrupted_run_says_where_it_stopped() -> None:
    stream = io.StringIO()
    bar = Progress(10, "retention", "op", tenths=True, stream=stream)
    bar.set(4)  # resumed with 4 done
    bar.advance()
    bar.close()
    assert stream.getvalue().splitlines()[-1].startswith("retention: stopped, 5/10 op in ")


def test_quiet_prints_nothing_on_a_pipe_or_a_terminal() -> None:
    assert _run_tenths(io.StringIO(), quiet=True) == "" and _run_tenths(Terminal(), quiet=True) == ""


def test_a_terminal_gets_a_bar_with_rate_and_eta() -> None:
    text = _run_tenths(Terminal())
    assert "\r" in text and "levels: gate calibration" in text and "op/s" in text
    assert "levels: start" not in text  # no plain lines on a terminal


# --- the periodic style (training, Monte Carlo, planning) ------------------------------------------------


def test_a_terminal_gets_a_bar_with_eta() -> None:
    term = Terminal()
    assert is_terminal(term)
    with Progress(4, "Monte Carlo", "draws", stream=term) as bar:
        assert bar.bar
        for _ in range(4):
            bar.advance()
    text = term.getvalue()
    assert "\r" in text and "Monte Carlo:" in text and "/4 [00:00<" in text  # tqdm's [elapsed<remaining]


def test_a_pipe_gets_one_line_per_stage_and_a_final_line() -> None:
    pipe = io.StringIO()
    assert not is_terminal(pipe)
    bar = Progress(3, "planning", "stages", stream=pipe)
    assert not bar.bar
    bar.stage("sensitivity")
    bar.advance(3)
    bar.close()
    bar.close()  # closing twice prints nothing more
    lines = pipe.getvalue().splitlines()
    assert "\r" not in pipe.getvalue()
    assert lines[0] == "planning: sensitivity" and lines[1].startswith("planning: 3/3 stages in ") and len(lines) == 2


def test_periodic_lines_and_silence() -> None:
    pipe = io.StringIO()
    bar = Progress(10, "epoch 1/3", "batch", stream=pipe, final_line=False, min_interval_s=0.0)
    for _ in bar.wrap(range(10)):
        pass
    lines = pipe.getvalue().splitlines()
    assert len(lines) == 9 and lines[0].startswith("epoch 1/3: 1/10 batch, ")  # none at 10/10, no final line
    quiet = io.StringIO()
    with Progress(2, "x", stream=quiet, enabled=False) as off:
        off.stage("a")
        off.advance(2)
    assert quiet.getvalue() == ""


def test_a_failed_stage_prints_no_done_line() -> None:
    pipe = io.StringIO()
    try:
        with Progress(2, "swim curve", "points", stream=pipe) as bar:
            bar.advance()
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert pipe.getvalue() == ""


# --- the ETA and the spacing of lines, on a fake clock ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_eta_counts_only_the_work_done_in_this_run_and_lines_keep_their_spacing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr("firmware_protocol.progress.time.monotonic", clock)
    pipe = io.StringIO()
    bar = Progress(100, "endurance", "op", tenths=True, stream=pipe)  # default: at least 1 s between lines
    bar.set(50)  # resumed: 50 done before, not part of the rate
    clock.t += 10.0
    bar.advance(10)  # 60 %: 10 op in 10 s, so 40 op left take 40 s
    clock.t += 0.5
    bar.advance(10)  # 70 %, but only 0.5 s after the previous line: skipped, not printed later
    clock.t += 0.5
    bar.advance(5)  # 75 %: no new tenth
    clock.t += 4.0
    bar.advance(5)  # 80 %: 30 op in 15 s, 20 op left take 10 s
    lines = pipe.getvalue().splitlines()
    assert lines == [
        "endurance: start, 100 op",
        "endurance: 60% (60/100 op), 10.0 s, about 40.0 s left",
        "endurance: 80% (80/100 op), 15.0 s, about 10.0 s left",
    ]
    clock.t += 185.0
    bar.close()  # 200 s: minutes past 100 s
    assert pipe.getvalue().splitlines()[-1] == "endurance: stopped, 80/100 op in 3.3 min"


def test_an_unknown_total_counts_without_an_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("firmware_protocol.progress.time.monotonic", clock)
    pipe = io.StringIO()
    bar = Progress(None, "planning", "stages", stream=pipe)  # default: a line a minute at most
    clock.t += 30.0
    bar.advance()  # too soon for a line
    clock.t += 31.0
    bar.advance()
    clock.t += 2.0
    bar.close()
    assert pipe.getvalue().splitlines() == ["planning: 2 stages, 61.0 s", "planning: 2 stages in 63.0 s"]
