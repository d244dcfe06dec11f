"""Progress: a tqdm bar with ETA on a terminal, plain lines (no carriage returns) anywhere else."""

from __future__ import annotations

import io

from models.progress import Progress, is_terminal


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_eta() -> None:
    term = Terminal()
    assert is_terminal(term)
    with Progress(4, "Monte Carlo", "draws", stream=term) as bar:
        assert bar.bar
        for _ in range(4):
            bar.update()
    text = term.getvalue()
    assert "\r" in text and "Monte Carlo:" in text and "/4 [00:00<" in text  # tqdm's [elapsed<remaining]


def test_a_pipe_gets_one_line_per_stage_and_a_final_line() -> None:
    pipe = io.StringIO()
    assert not is_terminal(pipe)
    bar = Progress(3, "planning", "stages", stream=pipe)
    assert not bar.bar
    bar.stage("sensitivity")
    bar.update(3)
    bar.close()
    bar.close()  # closing twice prints nothing more
    lines = pipe.getvalue().splitlines()
    assert "\r" not in pipe.getvalue()
    assert lines[0] == "planning: sensitivity" and lines[1].startswith("planning: 3/3 stages in ") and len(lines) == 2


def test_periodic_lines_and_silence() -> None:
    pipe = io.StringIO()
    bar = Progress(10, "epoch 1/3", "batch", stream=pipe, final_line=False, every_s=0.0)
    for _ in bar.wrap(range(10)):
        pass
    lines = pipe.getvalue().splitlines()
    assert len(lines) == 9 and lines[0].startswith("epoch 1/3: 1/10 batch, ")  # none at 10/10, no final line
    quiet = io.StringIO()
    with Progress(2, "x", stream=quiet, enabled=False) as off:
        off.stage("a")
        off.update(2)
    assert quiet.getvalue() == ""


def test_a_failed_stage_prints_no_done_line() -> None:
    pipe = io.StringIO()
    try:
        with Progress(2, "swim curve", "points", stream=pipe) as bar:
            bar.update()
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert pipe.getvalue() == ""
