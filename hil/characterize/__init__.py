"""Characterization experiments: the procedure framework, its run files, and one module per procedure."""
from hil.characterize.procedure import PROCEDURES, Procedure, get_procedure
from hil.characterize import endurance, form, iv, levels, read_noise, retention  # noqa: F401  (registration)

__all__ = ["PROCEDURES", "Procedure", "get_procedure"]
