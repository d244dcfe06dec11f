"""Fast start: `import hil.cli`, `rram --help`, `rram board info` and `rram characterize form --help` never import
the heavy libraries (torch, matplotlib, scipy.stats, sklearn); the commands that need them import them inside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "matplotlib", "scipy.stats", "sklearn")
REPO = Path(__file__).resolve().parents[3]

# Runs the real entry point (hil.cli.main) with argv in a fresh interpreter, then reports what it printed,
# its exit code and which heavy modules ended up imported.
_PROBE = """
import contextlib, io, json, sys
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out, code = io.StringIO(), 0
import hil.cli
if argv is not None:
    sys.argv = ["rram", *argv]
    with contextlib.redirect_stdout(out):
        try:
            hil.cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
print(json.dumps({"code": code, "out": out.getvalue(), "heavy": [m for m in heavy if m in sys.modules]}))
"""


def _probe(argv: list[str] | None, heavy: tuple[str, ...] = HEAVY) -> dict:
    cmd = [sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(heavy)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv, shows",
    [
        (None, ""),
        (["--help"], "characterize"),
        (["board", "info"], "SIM-RRAM"),
        (["characterize", "form", "--help"], "--v-start"),
    ],
)
def test_light_commands_import_no_heavy_library(argv: list[str] | None, shows: str) -> None:
    got = _probe(argv)
    assert got["code"] == 0, got["out"]
    assert shows in got["out"]
    assert got["heavy"] == [], f"rram {' '.join(argv or ['(import)'])} imported {got['heavy']}"


def test_the_probe_sees_what_a_command_imports() -> None:
    """The check above can fail: the same probe reports numpy, which `rram board info` does import."""
    assert _probe(["board", "info"], heavy=("numpy", "torch"))["heavy"] == ["numpy"]
