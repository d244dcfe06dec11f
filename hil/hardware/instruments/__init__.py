"""Bench instruments over VISA (pyvisa): the source-measure unit used to calibrate the board's read path."""
from hil.hardware.instruments.smu import (
    DIALECTS,
    ComplianceError,
    SimulatedResistorSmu,
    Smu,
    SmuConnectionError,
    SmuError,
    dialect_from_idn,
)

__all__ = [
    "DIALECTS",
    "ComplianceError",
    "SimulatedResistorSmu",
    "Smu",
    "SmuConnectionError",
    "SmuError",
    "dialect_from_idn",
]
