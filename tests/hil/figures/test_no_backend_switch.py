"""Importing hil.figures and drawing with it leave pyplot unimported and matplotlib's backend as the program set it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: this test process may already hold pyplot (matplotlib.image, other tests).
_CODE = """
import sys
from pathlib import Path

import matplotlib

before = matplotlib.get_backend()
import hil.figures, hil.figures.canvas, hil.figures.runs, hil.figures.profiles, hil.figures.swim

assert "matplotlib.pyplot" not in sys.modules, "importing hil.figures imported pyplot"
assert matplotlib.get_backend() == before, f"importing hil.figures switched the backend {before} -> {matplotlib.get_backend()}"
assert "torch" not in sys.modules, "importing hil.figures imported torch"

from calibration.profile import NoiseProfile
paths = hil.figures.profiles.plot_profile(NoiseProfile.from_paper("ibm_reram", time="1s"), Path(sys.argv[1]))
assert [p.name for p in paths] == ["sigma_vs_g.png", "relaxation.png"], paths
assert all(p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n" for p in paths)
assert "matplotlib.pyplot" not in sys.modules, "drawing a figure imported pyplot"
assert matplotlib.get_backend() == before, f"drawing a figure switched the backend {before} -> {matplotlib.get_backend()}"
print(before)
"""


def test_figures_import_and_draw_without_pyplot_or_a_backend_switch(tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "svg"}  # a backend none of hil.figures would pick, so a switch shows
    res = subprocess.run([sys.executable, "-c", _CODE, str(tmp_path)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "svg"
