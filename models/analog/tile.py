"""The analog crossbar tile's parameters: converters, noise, bounds, tile size, IR drop, drift compensation.

Units are those of the normalised tile, as in aihwkit's IO parameters: a layer's input enters the DAC
in [-1, 1] (after division by its input range alpha), a weight is a conductance in [-1, 1] (after the
column-wise mapping of max |W| to g_max), so "full scale" is one fully-on input on one g_max weight.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

DriftCompensation = Literal["none", "global", "column"]
WeightNoiseType = Literal["pcm_read", "constant"]
OutScale = Literal["column", "tile"]


def _f(default: Any, unit: str, help: str) -> Any:
    """A documented config field: its unit and a one-line help, read by `describe_fields` and the CLI."""
    return field(default=default, metadata={"unit": unit, "help": help})


@dataclass(frozen=True)
class AnalogTileConfig:
    """One analog tile computing y = W x: DAC and ADC, output noise and bound, per-MVM weight noise, tile size, IR drop."""

    dac_bits: int | None = _f(8, "bits", "input DAC: 2^b - 2 steps over [-1, 1], sign included (none = analog inputs)")
    adc_bits: int | None = _f(8, "bits", "output ADC: 2^b - 2 steps over [-out_bound, out_bound] (none = no ADC)")
    out_noise: float = _f(0.04, "full scale", "std of the Gaussian system noise at each output of each MVM")
    out_bound: float | None = _f(
        10.0, "full scale", "analog outputs clip at +-out_bound before the ADC (none = no bound)"
    )
    input_range: bool = _f(True, "-", "clip a layer's input at +-alpha and divide by alpha (learned or calibrated)")
    input_range_std: float = _f(3.0, "input std", "a calibrated alpha is this many standard deviations of the input")
    w_noise: float = _f(
        0.0175, "g_max", "short-term weight (read) noise drawn anew at every MVM, referred to the output"
    )
    w_noise_type: WeightNoiseType = _f(
        "pcm_read", "-", "pcm_read: std w_noise*sqrt(sum |w| x^2); constant: std w_noise*|x| per output"
    )
    tile_rows: int | None = _f(512, "rows", "inputs per tile: a longer input is split, each partial output digitised")
    tile_cols: int | None = _f(512, "columns", "outputs per tile: the extent of one global drift-compensation factor")
    ir_drop: float = _f(1.0, "-", "scale of the IR drop along the rows (0 = off); always off in training")
    ir_drop_g_ratio: float = _f(571428.57, "-", "wire conductance between neighbouring cells over g_max")
    drift_compensation: DriftCompensation = _f(
        "global", "-", "output scale from a reference read: one per tile (global), one per column, or none"
    )
    out_scale: OutScale = _f("column", "-", "digital output scale gamma = max |W| per tile column, or per whole tile")
    out_scale_levels: int | None = _f(
        None, "levels", "column scales stored as N integers times one scale per tile (Suppl. B.3.1; none = FP)"
    )

    def __post_init__(self) -> None:
        for name in ("dac_bits", "adc_bits"):
            bits = getattr(self, name)
            if bits is not None and not (isinstance(bits, int) and 2 <= bits <= 24):
                raise ValueError(f"analog tile: {name} must be a whole number from 2 to 24 (or none), got {bits!r}")
        for name in ("out_noise", "w_noise", "ir_drop"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"analog tile: {name} must be a finite number >= 0, got {v!r}")
        for name in ("input_range_std", "ir_drop_g_ratio"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"analog tile: {name} must be a finite number > 0, got {v!r}")
        if self.out_bound is not None and not (math.isfinite(self.out_bound) and self.out_bound > 0):
            raise ValueError(f"analog tile: out_bound must be a finite number > 0 (or none), got {self.out_bound!r}")
        if self.adc_bits is not None and self.out_bound is None:
            raise ValueError("analog tile: an ADC (adc_bits) needs an out_bound: its range is +-out_bound")
        for name in ("tile_rows", "tile_cols", "out_scale_levels"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v >= 1):
                raise ValueError(f"analog tile: {name} must be a whole number >= 1 (or none), got {v!r}")
        hints = get_type_hints(type(self))
        for name in ("w_noise_type", "drift_compensation", "out_scale"):
            allowed = get_args(hints[name])
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"analog tile: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )

    @property
    def is_ideal(self) -> bool:
        """True when nothing of the tile changes the result: the forward is then the layer's digital forward."""
        return (
            self.dac_bits is None
            and self.adc_bits is None
            and self.out_noise == 0
            and self.out_bound is None
            and not self.input_range
            and self.w_noise == 0
            and self.tile_rows is None
            and self.ir_drop == 0
            and self.drift_compensation == "none"
        )

    def for_training(self) -> AnalogTileConfig:
        """The tile as HWA training sees it: IR drop off (A.1.7, A.1.8) and no drift compensation (nothing drifts)."""
        return dataclasses.replace(self, ir_drop=0.0, drift_compensation="none")

    def replace(self, **changes: Any) -> AnalogTileConfig:
        """A copy with some fields changed; values may be strings as typed on a command line (``adc_bits="6"``)."""
        known = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"analog tile: unknown field(s) {', '.join(unknown)} (known: {', '.join(known)})")
        hints = get_type_hints(type(self))
        return dataclasses.replace(self, **{k: _convert(k, hints[k], v) for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (rebuild with ``AnalogTileConfig(**d)``)."""
        return dataclasses.asdict(self)


def _convert(name: str, hint: Any, value: Any) -> Any:
    """A field value from a Python value or a command-line string, in one line when it does not convert."""
    args = get_args(hint)
    nullable = type(None) in args
    if nullable and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off"))):
        return None
    base = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if base is float:
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"analog tile: {name} must be {getattr(base, '__name__', base)}, got {value!r}") from None
    return value


# Named tiles. "ibm_table1" pins Supplementary Table 1 of Rasch et al., "Hardware-aware training for large-scale
# and diverse deep learning inference workloads using in-memory computing-based accelerators" (Nat. Commun. 2023):
# 8-bit ADC and DAC, output noise 0.04, output bound 10, learned input range, 512x512 tiles, wire-conductance to
# g_max ratio 571428.57, short-term (PCM_READ) weight noise 0.0175, IR-drop scale 1, global drift compensation,
# digital bias, column-wise digital output scales. (PCM programming noise and drift are the run's weight noise here.)
PRESETS: dict[str, AnalogTileConfig] = {
    "ibm_table1": AnalogTileConfig(
        dac_bits=8,
        adc_bits=8,
        out_noise=0.04,
        out_bound=10.0,
        input_range=True,
        input_range_std=3.0,
        w_noise=0.0175,
        w_noise_type="pcm_read",
        tile_rows=512,
        tile_cols=512,
        ir_drop=1.0,
        ir_drop_g_ratio=571428.57,
        drift_compensation="global",
        out_scale="column",
    ),
    "ideal": AnalogTileConfig(
        dac_bits=None,
        adc_bits=None,
        out_noise=0.0,
        out_bound=None,
        input_range=False,
        w_noise=0.0,
        tile_rows=None,
        tile_cols=None,
        ir_drop=0.0,
        drift_compensation="none",
    ),
}


def analog_config(preset: str | AnalogTileConfig = "ibm_table1", **changes: Any) -> AnalogTileConfig:
    """A named preset (or a config), with ``changes`` applied (strings accepted, as from ``--analog-opt k=v``)."""
    if isinstance(preset, AnalogTileConfig):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown analog tile preset {preset!r} (known: {', '.join(PRESETS)})")
    return base.replace(**changes) if changes else base


def describe_fields() -> list[tuple[str, Any, str, str]]:
    """(name, default, unit, help) of every field, in declaration order (for ``--list`` style help)."""
    return [(f.name, f.default, f.metadata["unit"], f.metadata["help"]) for f in dataclasses.fields(AnalogTileConfig)]
