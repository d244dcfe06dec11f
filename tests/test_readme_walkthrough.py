"""The README's walkthrough, run as the separate commands it shows, on the default (persistent) simulated chip.

Each command runs in its own process, as a user would type it, so the chip must persist between them;
the checks are on the numbers each step leaves behind, with bounds a healthy simulated chip meets by
a wide margin (formed and healthy fractions, window, fitted sigma, accuracies).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from calibration.profile import load_profile
from hil.characterize.runfile import read_run

README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough_commands() -> list[list[str]]:
    """The `rram ...` lines between the walkthrough markers of the README, split as a shell would."""
    text = README.read_text()
    block = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("rram ")]


def _rram(args: list[str], cwd: Path) -> str:
    """Run one README command in a fresh process (the `rram` entry point) and return what it printed."""
    cmd = [sys.executable, "-m", "hil.cli", *args[1:]]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, f"{shlex.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def _percent(text: str, label: str) -> float:
    """The percentage printed on the `label` line of a summary (e.g. 'measured accuracy  90.00 %')."""
    match = re.search(rf"^\s*{re.escape(label)}\s+([0-9.]+) %", text, re.MULTILINE)
    assert match, f"no '{label}' line in:\n{text}"
    return float(match.group(1)) / 100


@pytest.mark.slow
def test_the_readme_walkthrough_takes_a_pristine_chip_to_a_deployed_network(tmp_path: Path) -> None:
    commands = walkthrough_commands()
    assert [c[1] for c in commands][:2] == ["board", "characterize"] and commands[-1][1:3] == ["evaluate", "--deployed"]
    out = {shlex.join(c): _rram(c, tmp_path) for c in commands}

    def summary(name: str) -> dict:
        return read_run(tmp_path / name).summary

    form = summary("form.h5")
    assert form["formed"] >= 0.9 * form["cells"]  # 2 % of the simulated cells cannot form, a few more are stuck
    endurance = summary("endurance.h5")
    assert endurance["window_first"] > 5 and endurance["window_last"] > 2
    levels = summary("levels.h5")
    assert levels["healthy"] >= 0.9 * levels["cells"]
    # write-verify lands much closer to its targets than one open-loop pulse (0.8 µS tolerance)
    assert levels["verified"]["sigma_s"] < 1e-6 < levels["open_loop"]["sigma_s"]
    read_noise = summary("read-noise.h5")
    assert 0.1e-6 < read_noise["sigma_median_s"] < 1e-6  # the simulated white read noise is 1 % of 40 µS
    assert len(list((tmp_path / "figures").glob("*.png"))) >= 6

    profile = load_profile(tmp_path / "profile.h5")
    assert profile.g_min < profile.g_max
    mid = 0.5 * (profile.g_min + profile.g_max)
    assert profile.open_loop is not None and profile.verified is not None
    sigma_open, sigma_verified = float(profile.open_loop.sigma(mid)), float(profile.verified.sigma(mid))
    assert 0.5e-6 < sigma_open < 10e-6 and 0 < sigma_verified < sigma_open

    trained = out[next(k for k in out if k.startswith("rram evaluate model.pt"))]
    clean, noisy = _percent(trained, "clean accuracy"), _percent(trained, "noisy accuracy")
    assert clean > 0.8 and 0.5 < noisy <= clean
    assert (tmp_path / "curve.png").stat().st_size > 0
    deployed = out["rram evaluate --deployed deploy.h5 --calibrate"]
    assert _percent(deployed, "measured accuracy") > 0.5  # ten classes: chance is 10 %
    assert _percent(deployed, "after calibration") > 0.5
    assert "predicted 5th percentile" in deployed and "per-device errors KS p" in deployed
    day = out["rram evaluate --deployed deploy.h5 --age 1d --calibrate"]
    assert "1 d after programming" in day and "a fresh read per 90 inputs" in day  # 4 reads of 360 test inputs
    assert _percent(day, "measured accuracy") > 0.3 and _percent(day, "calibrated again") > 0.3
    assert summary("deploy.h5")["tiles"] >= 1
    # the deployment programmed its one-shot devices with the gate map the profile's open-loop law was measured with
    assert profile.open_loop.gate_map is not None and summary("deploy.h5")["gate_source"] == "profile"


@pytest.mark.parametrize("name", ["form", "iv", "endurance", "retention", "levels", "read-noise"])
def test_every_procedure_appears_in_the_walkthrough(name: str) -> None:
    assert any(c[1:3] == ["characterize", name] for c in walkthrough_commands())
