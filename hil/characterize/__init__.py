"""Characterization experiments: the procedure framework, its run files, and one module per procedure."""

from hil.characterize import endurance, form, iv, levels, read_noise, retention  # noqa: F401  (registration)
from hil.characterize.procedure import PROCEDURES, ParamSpec, Procedure, get_procedure, param

__all__ = ["PROCEDURES", "ParamSpec", "Procedure", "get_procedure", "param"]
