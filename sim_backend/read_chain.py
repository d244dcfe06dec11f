"""Board read chain: transimpedance amplifier + ADC turning cell currents into raw codes, with per-board errors.

code = clip(round((offset_v + gain * R_tia * I) / lsb), 0, 2**bits - 1), lsb = v_ref / 2**bits.
The board advertises a nominal calibration (amps_per_code, offset_code) so that
I ~= (code - offset_code) * amps_per_code; the true gain and offset differ by small seeded errors
that a host-side calibration against an SMU is meant to find (they are in ``ground_truth()``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class RangeConfig:
    """Nominal design of one current range and the spread of its per-board errors."""

    name: str
    transimpedance_ohm: float  # TIA gain (V/A)
    adc_bits: int  # ADC resolution, at most 16 (codes are uint16)
    v_ref: float  # ADC full-scale input span (V): code = V / (v_ref / 2**bits)
    offset_v: float  # nominal amplifier output at zero current (V); mid-scale for bipolar ranges
    gain_error_sd: float = 0.01  # relative sd of the true gain (1 % resistor + amplifier tolerance)
    offset_error_sd_v: float = 2e-3  # sd of the true output offset (V), a few mV for a precision op-amp

    def __post_init__(self) -> None:
        """Reject impossible ranges with a one-line message."""
        if not 1 <= int(self.adc_bits) <= 16 or int(self.adc_bits) != self.adc_bits:
            raise ValueError(f"range {self.name!r}: adc_bits must be an integer in 1..16, got {self.adc_bits!r}")
        for key in ("transimpedance_ohm", "v_ref"):
            val = getattr(self, key)
            if not np.isfinite(val) or val <= 0:
                raise ValueError(f"range {self.name!r}: {key} must be positive, got {val!r}")
        if not 0 <= self.offset_v < self.v_ref:
            raise ValueError(f"range {self.name!r}: offset_v must lie in [0, v_ref), got {self.offset_v!r}")
        if self.gain_error_sd < 0 or self.offset_error_sd_v < 0:
            raise ValueError(f"range {self.name!r}: error spreads must be non-negative")


def _default_read_range() -> RangeConfig:
    """Read range: 500 kOhm TIA, 16-bit ADC on 4.096 V: 0.125 nA/code, -256 nA (6 sigma of read noise) to +7.9 uA (~2 x g_max x 0.1 V)."""
    return RangeConfig("read", transimpedance_ohm=5e5, adc_bits=16, v_ref=4.096, offset_v=0.128)


def _default_pulse_range() -> RangeConfig:
    """Pulse range: 2 kOhm TIA, 12-bit bipolar ADC on 2.5 V (mid-scale offset): +-625 uA, above the 500 uA compliance."""
    return RangeConfig("pulse", transimpedance_ohm=2e3, adc_bits=12, v_ref=2.5, offset_v=1.25)


@dataclass(frozen=True)
class ReadChainConfig:
    """The two current ranges of the board."""

    read: RangeConfig = field(default_factory=_default_read_range)
    pulse: RangeConfig = field(default_factory=_default_pulse_range)


@dataclass(frozen=True)
class Conversion:
    """ADC result: raw codes and which samples clipped at either rail."""

    codes: np.ndarray  # uint16
    saturated: np.ndarray  # bool


class CurrentRange:
    """One TIA + ADC range with its true (seeded) gain and offset."""

    def __init__(self, config: RangeConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.lsb_v = config.v_ref / 2 ** int(config.adc_bits)
        self.max_code = 2 ** int(config.adc_bits) - 1
        self.true_gain = 1.0 + config.gain_error_sd * rng.standard_normal()
        self.true_offset_v = config.offset_v + config.offset_error_sd_v * rng.standard_normal()

    # nominal calibration (what the board reports before any host calibration)
    @property
    def amps_per_code(self) -> float:
        """Nominal current per ADC code (A)."""
        return self.lsb_v / self.config.transimpedance_ohm

    @property
    def offset_code(self) -> float:
        """Nominal code at zero current."""
        return self.config.offset_v / self.lsb_v

    # true calibration (ground truth)
    @property
    def true_amps_per_code(self) -> float:
        """True current per ADC code (A) of this board."""
        return self.lsb_v / (self.config.transimpedance_ohm * self.true_gain)

    @property
    def true_offset_code(self) -> float:
        """True code at zero current of this board."""
        return self.true_offset_v / self.lsb_v

    def convert(self, current) -> Conversion:
        """Quantize currents (A) to codes with rail saturation."""
        i = np.asarray(current, dtype=float)
        if not np.isfinite(i).all():
            raise ValueError(f"{self.config.name} range: currents must be finite")
        raw = np.rint(self.true_offset_code + i / self.true_amps_per_code)
        saturated = (raw < 0) | (raw > self.max_code)
        return Conversion(np.clip(raw, 0, self.max_code).astype(np.uint16), saturated)

    def codes(self, current) -> np.ndarray:
        """Raw uint16 ADC codes for currents (A)."""
        return self.convert(current).codes

    def saturated(self, current) -> np.ndarray:
        """Mask of currents that clip at either rail of this range."""
        return self.convert(current).saturated

    def to_current(self, codes, true: bool = False) -> np.ndarray:
        """Invert codes to amperes with the nominal calibration (or the true one if `true`)."""
        c = np.asarray(codes, dtype=float)
        if true:
            return (c - self.true_offset_code) * self.true_amps_per_code
        return (c - self.offset_code) * self.amps_per_code

    @property
    def min_current(self) -> float:
        """Most negative current that does not saturate (true calibration, A)."""
        return (0 - self.true_offset_code) * self.true_amps_per_code

    @property
    def max_current(self) -> float:
        """Largest current that does not saturate (true calibration, A)."""
        return (self.max_code - self.true_offset_code) * self.true_amps_per_code

    def ground_truth(self) -> dict:
        """Nominal design, nominal calibration and the true per-board values."""
        out = {k: v for k, v in asdict(self.config).items()}
        out.update(
            amps_per_code=self.amps_per_code,
            offset_code=self.offset_code,
            true_gain=self.true_gain,
            true_offset_v=self.true_offset_v,
            true_amps_per_code=self.true_amps_per_code,
            true_offset_code=self.true_offset_code,
        )
        return out


class ReadChain:
    """The board's read range (small read currents) and pulse range (currents during SET/RESET/FORM)."""

    def __init__(self, config: ReadChainConfig = ReadChainConfig(), seed: int = 0) -> None:
        if not isinstance(config, ReadChainConfig):
            raise ValueError(f"config must be a ReadChainConfig, got {type(config).__name__}")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x5EAD])))
        self.config = config
        self.seed = int(seed)
        self.read = CurrentRange(config.read, rng)
        self.pulse = CurrentRange(config.pulse, rng)

    def range(self, name: str) -> CurrentRange:
        """Range by name ('read' or 'pulse')."""
        if name not in ("read", "pulse"):
            raise ValueError(f"unknown current range {name!r}; expected 'read' or 'pulse'")
        return getattr(self, name)

    def convert(self, current, range_name: str = "read") -> Conversion:
        """Codes and saturation mask of currents (A) on the named range."""
        return self.range(range_name).convert(current)

    def codes(self, current, range_name: str = "read") -> np.ndarray:
        """Raw uint16 codes of currents (A) on the named range."""
        return self.range(range_name).codes(current)

    def ground_truth(self) -> dict[str, dict]:
        """True and nominal calibration of both ranges."""
        return {"read": self.read.ground_truth(), "pulse": self.pulse.ground_truth()}
