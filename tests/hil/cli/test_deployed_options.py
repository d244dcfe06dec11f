"""`rram evaluate --deployed`'s and `rram program`'s aging options refuse bad input in one line, before any work."""

from __future__ import annotations

import pytest

from tests.helpers.cli import assert_one_line_error, rram


def test_evaluate_options_that_need_a_deployment_or_a_valid_age(capsys, monkeypatch, tmp_path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"")
    assert_one_line_error(rram(capsys, monkeypatch, "evaluate", str(model), "--calibrate"), "go with --deployed")
    assert_one_line_error(rram(capsys, monkeypatch, "evaluate", str(model), "--age", "1d"), "go with --deployed")
    dep = tmp_path / "d.h5"
    dep.write_bytes(b"")
    r = rram(capsys, monkeypatch, "evaluate", "--deployed", str(dep), "--age", "tomorrow")
    assert_one_line_error(r, "--age", "'tomorrow' is not an age")
    r = rram(capsys, monkeypatch, "evaluate", "--deployed", str(dep), "--age", "1d", "--reread", str(dep))
    assert_one_line_error(r, "--age", "--reread", "not both")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["program", "M.pt", "--profile", "P.h5", "--ages", "1h,soon", "-o", "OUT"], "--ages: 'soon' is not an age"),
        (["reread", "DEP", "--at", "later", "-o", "OUT"], "--at 'later' is not an age"),
    ],
)
def test_bad_ages_are_one_line_errors(capsys, monkeypatch, tmp_path, args, fragment) -> None:
    (tmp_path / "DEP").write_bytes(b"")
    args = [str(tmp_path / a) if a in ("M.pt", "P.h5", "OUT", "DEP") else a for a in args]
    assert_one_line_error(rram(capsys, monkeypatch, *args), fragment)
