"""pyvisa backend strings: '' (system VISA), '@py', 'file.yaml@sim', and '2400@sim' for a packaged simulated SMU.

The pyvisa-sim instrument files ship inside the package (hil/hardware/instruments/sim/smu_DIALECT.yaml)
and are found through importlib.resources, so the short form works after `pip install`, not only in a
checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SIM_SUFFIX = "@sim"
_SIM_PACKAGE, _SIM_FOLDER = "hil.hardware.instruments", "sim"
_PREFIX, _EXT = "smu_", ".yaml"


def packaged_sim_files() -> dict[str, Path]:
    """Dialect name ('2400') -> path of the pyvisa-sim file of that simulated SMU shipped with the package."""
    folder = resources.files(_SIM_PACKAGE) / _SIM_FOLDER
    found = {}
    for entry in folder.iterdir():
        if entry.name.startswith(_PREFIX) and entry.name.endswith(_EXT):
            found[entry.name[len(_PREFIX) : -len(_EXT)]] = Path(str(entry))  # an installed package is on disk
    return dict(sorted(found.items()))


def is_simulated(backend: str) -> bool:
    """True for a pyvisa-sim backend ('...@sim')."""
    return backend.endswith(SIM_SUFFIX)


def resolve_backend(backend: str) -> str:
    """The backend string pyvisa gets: a short simulated name ('2400@sim', 'smu_2450@sim') becomes its packaged file.

    A path to an existing file is kept as given; FileNotFoundError (one line, naming the packaged
    SMUs) for a '...@sim' that is neither.
    """
    if not is_simulated(backend) or backend == SIM_SUFFIX:
        return backend  # system VISA, '@py', or pyvisa-sim's own default instruments
    spec = backend[: -len(SIM_SUFFIX)]
    if Path(spec).is_file():
        return backend
    packaged = packaged_sim_files()
    short = spec.removeprefix(_PREFIX).removesuffix(_EXT)
    if Path(spec).name == spec and short in packaged:
        return f"{packaged[short]}{SIM_SUFFIX}"
    known = ", ".join(f"{name}{SIM_SUFFIX}" for name in packaged)
    raise FileNotFoundError(f"VISA simulation file not found: {spec} (packaged simulated SMUs: {known})")
