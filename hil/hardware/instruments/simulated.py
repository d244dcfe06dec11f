"""A simulated SMU wired across a resistor, on the packaged pyvisa-sim instruments (`--visa-backend 2400@sim`).

Kept out of the driver module: it exists for tests and for trying `rram board calibrate` without
bench instruments. The simulated instrument's :READ? returns whatever was loaded last with the
simulator-only SIM:READ / SIM:TRIP commands (see sim/smu_*.yaml); this class loads what a real SMU
would read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pyvisa

from hil.hardware.instruments.smu import Smu, SmuError


def _load_2400(v: float, i: float, tripped: bool) -> list[str]:
    status = (1 << 3 if tripped else 0) | (1 << 12) | (1 << 14)  # compliance, I-meas, V-source
    return [f"SIM:READ {v:+.6E},{i:+.6E},{float(status):+.6E}"]


def _load_2450(v: float, i: float, tripped: bool) -> list[str]:
    return [f"SIM:READ {i:+.6E}", f"SIM:TRIP {int(tripped)}"]


# dialect -> simulator-only commands that make the next :READ? report (voltage, current, compliance tripped)
LOAD_READING: dict[str, Callable[[float, float, bool], list[str]]] = {"2400": _load_2400, "2450": _load_2450}


class SimulatedResistorSmu(Smu):
    """A pyvisa-sim SMU across a resistor: each reading is Ohm's law, clamped at the compliance, plus seeded noise."""

    def __init__(
        self,
        resource: pyvisa.resources.MessageBasedResource,
        *,
        max_voltage_v: float,
        dialect: str = "auto",
        name: str = "",
        noise_rel: float = 2e-5,
        noise_a: float = 5e-12,
        seed: int = 0,
    ) -> None:
        super().__init__(resource, max_voltage_v=max_voltage_v, dialect=dialect, name=name)
        self.load_ohm: float | None = None
        self.noise_rel = noise_rel
        self.noise_a = noise_a
        self._rng = np.random.default_rng(seed)

    def connect(self, ohms: float) -> None:
        """Wire the SMU across a resistor of `ohms` (the relay / cable of a real fixture)."""
        if not (math.isfinite(ohms) and ohms > 0):
            raise ValueError(f"load resistance must be positive, got {ohms!r}")
        self.load_ohm = float(ohms)

    def measure_current(self) -> float:
        """Load I = V / R (+ noise, clamped at the compliance) into the simulator, then read it like a real SMU."""
        if self.load_ohm is None:
            raise SmuError("simulated SMU is not connected to a load (call connect(ohms) first)")
        if self.output_on:
            i = self.voltage_v / self.load_ohm
            i += abs(i) * self.noise_rel * self._rng.standard_normal() + self.noise_a * self._rng.standard_normal()
            limit = self.compliance_a or 0.0
            tripped = abs(i) >= limit
            i = float(np.clip(i, -limit, limit))
            for cmd in LOAD_READING[self.dialect.name](self.voltage_v, i, tripped):
                self._write(cmd)
        return super().measure_current()
