"""`rram swim curve` off a terminal: one progress line per stage on stderr, the table alone on stdout."""

from __future__ import annotations

import json

from tests.helpers.cli import rram
from tests.hil.deploy.test_deploy import _lognormal_profile, _model_file


def test_swim_curve_prints_a_line_per_stage_when_not_on_a_terminal(tmp_path, capsys, monkeypatch) -> None:
    prof = _lognormal_profile(tmp_path, capsys, monkeypatch, "--pulses-verified", "10")
    model = _model_file(tmp_path / "m.pt")
    args = ["swim", "curve", str(model), "--profile", str(prof), "--fractions", "0,0.5,1", "--methods"]
    r = rram(capsys, monkeypatch, *args, "magnitude,random", "--mc", "3", "--sens-samples", "20")
    assert r.code == 0, r.text
    lines = r.err.splitlines()  # capsys is no terminal: plain lines, no bar, no carriage returns
    assert "\r" not in r.err and all(ln.startswith("swim curve: ") for ln in lines), r.err
    stages = [ln.removeprefix("swim curve: ") for ln in lines]
    assert stages[0] == "analog conductance pairs (one pair per weight); sensitivity over 20 samples"
    assert stages[1:3] == ["magnitude: 3 fractions x 3 draws", "random: 3 fractions x 3 draws"]
    assert stages[3].startswith("6/6 points in ") and len(stages) == 4
    assert "swim curve:" not in r.out and r.out.startswith("| method | verified |")
    assert "1% KPP [95% CI]" in r.out
    # --json: stdout is the JSON alone; every point carries its 1 % KPP interval and the draws behind it
    r = rram(capsys, monkeypatch, *args, "magnitude", "--mc", "3", "--sens-samples", "20", "--json")
    assert r.code == 0, r.text
    points = json.loads(r.out)["points"]
    assert [p["draws"] for p in points] == [3, 3, 3]
    # 3 draws: the interval's ends are the extreme draws and cover far less than 95 % (said, not hidden)
    assert all(p["kpp1_ci"][0] <= p["kpp1"] <= p["kpp1_ci"][1] and p["kpp1_ci_coverage"] < 0.95 for p in points)
