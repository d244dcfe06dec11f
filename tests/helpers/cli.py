"""Run the real `rram` entry point in-process and check its one-line errors."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from hil.cli import main


@dataclasses.dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def rram(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str) -> CliResult:
    """Run the real console entry point (with its one-line error handling) and capture what it prints."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["rram", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    cap = capsys.readouterr()
    return CliResult(code, cap.out, cap.err)


def assert_one_line_error(r: CliResult, *fragments: str) -> None:
    assert r.code != 0, r.text
    assert "Traceback" not in r.text
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.err
    for f in fragments:
        assert f in lines[0], lines[0]
