"""Characterization procedures: each a resumable unit that writes its run file as it goes."""
from hil.procedures.base import PROCEDURES, Procedure, get_procedure  # noqa: F401
from hil.procedures import endurance, form, iv, levels, program, read_noise, retention  # noqa: F401  (registration)
