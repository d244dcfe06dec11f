"""Each procedure is paired with its figure: every characterization procedure has a registered run plotter."""

from __future__ import annotations

from pathlib import Path

import hil.deploy.procedure  # noqa: F401  (registers the deployment run "program", which is not a characterization)
from hil.characterize import PROCEDURES
from hil.characterize.runfile import RunData
from hil.figures.runs import PLOTTERS, plotter_for

CHARACTERIZATIONS = {"form", "iv", "endurance", "retention", "levels", "read-noise"}


def test_every_characterization_procedure_has_a_plotter() -> None:
    chosen = {name for name, cls in PROCEDURES.items() if cls.characterization}
    assert CHARACTERIZATIONS <= chosen  # the listing is complete, so the check below covers every procedure
    missing = sorted(name for name in chosen if name not in PLOTTERS)
    assert not missing, f"procedures without a plotter in hil.figures.runs.PLOTTERS: {missing}"


def test_every_plotter_is_named_after_a_registered_procedure() -> None:
    stray = sorted(name for name in PLOTTERS.names() if name not in PROCEDURES)
    assert not stray, f"plotters registered under names no procedure has: {stray}"


def test_plotter_for_looks_the_procedure_up_in_the_registry() -> None:
    for name, plotter in PLOTTERS.items():
        run = RunData(Path("x.h5"), name, "complete", params={}, board={}, calibration={}, data={}, attrs={})
        assert plotter_for(run) is plotter
