"""Bench instruments over VISA (pyvisa): the source-measure unit used to calibrate the board's read path.

The simulated SMU (`hil.hardware.instruments.simulated`) and the packaged pyvisa-sim files it runs on
(`hil.hardware.instruments.backends`, folder sim/) are kept apart from the driver.
"""

from hil.hardware.instruments.backends import packaged_sim_files, resolve_backend
from hil.hardware.instruments.smu import (
    DIALECTS,
    ComplianceError,
    Smu,
    SmuConnectionError,
    SmuError,
    dialect_from_idn,
)

__all__ = [
    "DIALECTS",
    "ComplianceError",
    "Smu",
    "SmuConnectionError",
    "SmuError",
    "dialect_from_idn",
    "packaged_sim_files",
    "resolve_backend",
]
