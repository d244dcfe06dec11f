"""Build a WeightNoise from a JSON-able spec (one registered builder per noise family) or from a noise profile."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware_protocol.registry import Registry
from models.mapping import AnalogMapping, BitSlicedMapping
from models.noise.base import WeightNoise
from models.noise.families import (
    AUTHORS_MID_FRACTION,
    STATE_MODES,
    AdditiveNoise,
    CensoredNoise,
    DeviceGaussianNoise,
    LogNormalNoise,
    MomentNoise,
    WriteVerifyNoise,
    level_factors,
    state_t,
)

NoiseBuilder = Callable[[dict[str, Any]], WeightNoise]
NOISE_FAMILIES: Registry[NoiseBuilder] = Registry("noise family")
_MAPPING_KEYS = ("bits", "bits_per_device", "sign", "scale")


def _take(spec: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(spec) - allowed - {"family"})
    if unknown:
        raise ValueError(f"noise family {spec.get('family')!r}: unknown key(s) {', '.join(unknown)}")


def _mapping(spec: dict[str, Any]) -> BitSlicedMapping:
    return BitSlicedMapping(**{k: spec[k] for k in _MAPPING_KEYS if k in spec})


_DEVICE_KEYS = ("sigma", "convention", "quantize", *_MAPPING_KEYS)
_STATE_KEYS = ("model", "state", "mid_fraction")


def _device(spec: dict[str, Any], model: str | None) -> DeviceGaussianNoise:
    if "sigma" not in spec:
        raise ValueError(
            f"noise family {spec['family']!r} needs 'sigma' (device sigma_d as a fraction of its full range)"
        )
    mp = _mapping(spec)
    opts: dict[str, Any] = {}
    if model:
        state = str(spec.get("state", "weight"))
        if state not in STATE_MODES:
            raise ValueError(
                f"unknown state-dependent mode {state!r}: 'weight' (the NeFT authors' per-weight factor, "
                "renormalised; the default) or 'level' (eq. 16 per device level)"
            )
        if state == "level":
            opts["factors"] = level_factors(model, mp.n_levels)
        else:
            opts["mid_factor"] = state_t(model)
            frac = spec.get("mid_fraction", AUTHORS_MID_FRACTION)
            if frac is not None and not isinstance(frac, (int, float)):
                raise ValueError(f"'mid_fraction' is a number in [0, 1] or null (measured per layer), got {frac!r}")
            opts["mid_fraction"] = None if frac is None else float(frac)
    elif "state" in spec or "mid_fraction" in spec:
        raise ValueError("'state' and 'mid_fraction' belong to a state-dependent model: give 'model' too")
    return DeviceGaussianNoise(
        sigma=float(spec["sigma"]),
        mapping=mp,
        quantize=bool(spec.get("quantize", False)),
        model=model,
        convention=str(spec.get("convention", "range")),
        **opts,
    )


_SIGMA_FAMILIES = ("gaussian", "state_dependent", "censored", "write_verify")  # families with a device sigma_d


def pin_conventions(spec: Any, legacy: bool = False) -> Any:
    """`spec` with its sigma_d convention (and state-dependent mode) written out, so a stored spec keeps its meaning.

    ``legacy``: for a spec stored before the full-range convention (a model file without the keys), which meant
    level steps (eq. 15) and per-level state factors; otherwise this software's defaults ("range", "weight").
    Keys already present are kept; a nested "base" spec is pinned instead of the wrapper.
    """
    if not isinstance(spec, dict):
        return spec
    if isinstance(spec.get("base"), dict):  # a wrapping family (censored, write_verify, layers): pin its base
        return {**spec, "base": pin_conventions(spec["base"], legacy)}
    if spec.get("family") not in _SIGMA_FAMILIES:
        return dict(spec)  # a copy all the same: two entries of a model file never share one dict
    out = dict(spec)
    out.setdefault("convention", "level" if legacy else "range")
    if "model" in out:
        out.setdefault("state", "level" if legacy else "weight")
    return out


def _base(spec: dict[str, Any]) -> WeightNoise | None:
    """The base noise of a wrapping family: a nested spec under "base", else a device family from the same keys."""
    return noise_from_spec(spec["base"]) if "base" in spec else _device(spec, spec.get("model"))


@NOISE_FAMILIES.register("gaussian")
def _gaussian(spec: dict[str, Any]) -> WeightNoise:
    _take(spec, set(_DEVICE_KEYS))
    return _device(spec, None)


@NOISE_FAMILIES.register("state_dependent")
def _state_dependent(spec: dict[str, Any]) -> WeightNoise:
    _take(spec, {*_DEVICE_KEYS, *_STATE_KEYS})
    if "model" not in spec:
        raise ValueError("state_dependent noise needs 'model' (RRAM1, RRAM2, FeFET1 or FeFET2)")
    return _device(spec, str(spec["model"]))


@NOISE_FAMILIES.register("lognormal")
def _lognormal(spec: dict[str, Any]) -> WeightNoise:
    _take(spec, {"sigma"})
    return LogNormalNoise(float(spec["sigma"]))


@NOISE_FAMILIES.register("additive")
def _additive(spec: dict[str, Any]) -> WeightNoise:
    _take(spec, {"eta", "per_channel"})
    return AdditiveNoise(float(spec["eta"]), bool(spec.get("per_channel", False)))


@NOISE_FAMILIES.register("censored")
def _censored(spec: dict[str, Any]) -> WeightNoise:
    _take(spec, {"lam", "recentre", "base", *_DEVICE_KEYS, *_STATE_KEYS})
    base = _base(spec)
    if not isinstance(base, MomentNoise):
        raise ValueError("censored noise needs a Gaussian base family (gaussian, state_dependent, additive)")
    return CensoredNoise(base, float(spec.get("lam", 1.0)), bool(spec.get("recentre", False)))


@NOISE_FAMILIES.register("layers")
def _layers(spec: dict[str, Any]) -> WeightNoise:
    from models.noise.subset import LayerSubsetNoise

    _take(spec, {"layers", "base"})
    if not isinstance(spec.get("base"), dict):
        raise ValueError("noise family 'layers' needs 'base', the spec of the noise its layers get")
    layers = spec.get("layers", ["last"])
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise ValueError(f"noise family 'layers': 'layers' is a list of weight names or 'last', got {layers!r}")
    base = noise_from_spec(spec["base"])
    if base is None:
        raise ValueError("noise family 'layers': its base is clean (family 'none'): give a noise family")
    return LayerSubsetNoise(base, tuple(layers))


@NOISE_FAMILIES.register("write_verify")
def _write_verify(spec: dict[str, Any]) -> WeightNoise:
    _take(spec, {"threshold", "base", *_DEVICE_KEYS, *_STATE_KEYS})
    base = _base(spec)
    if not isinstance(base, DeviceGaussianNoise):
        raise ValueError("write_verify noise needs a device base family (gaussian or state_dependent)")
    if "threshold" not in spec:
        raise ValueError("write_verify noise needs 'threshold' (bound on |device error|, in level steps)")
    return WriteVerifyNoise(base, float(spec["threshold"]))


@NOISE_FAMILIES.register("profile")
def _profile(spec: dict[str, Any]) -> WeightNoise:
    from models.noise.profile_noise import noise_from_profile_spec

    return noise_from_profile_spec(spec)


FAMILIES = tuple(NOISE_FAMILIES.names())


def noise_from_spec(spec: dict[str, Any] | None) -> WeightNoise | None:
    """Build the noise a spec describes; ``None`` (or family "none") means a clean model.

    Specs: {"family": "gaussian", "sigma": 0.1[, "convention": "range", "bits": 8, "bits_per_device": 2,
    "sign": "separate", "scale": "layer", "quantize": false]} (sigma_d a fraction of a device's full range of
    2^K - 1 level steps; "convention": "level" reads it in level steps, NeFT eq. 15 literally);
    {"family": "state_dependent", "model": "RRAM2", "sigma": 0.1[, "state": "weight", "mid_fraction": 0.4]}
    ("weight": the NeFT authors' per-weight factor t on mid-magnitude weights, renormalised with the mid
    fraction f, null = the layer's own; "level": t at every device's inner levels, not renormalised);
    {"family": "lognormal", "sigma": 0.3}; {"family": "additive", "eta": 0.05[, "per_channel": false]};
    {"family": "censored", "lam": 1.0, "recentre": false, "sigma": 0.1 | "base": {...}};
    {"family": "write_verify", "threshold": 0.05, "sigma": 0.1 | "base": {...}} (threshold in level steps);
    {"family": "profile", "path": "profile.h5", "t_s": 86400, ...};
    {"family": "layers", "layers": ["last"] | ["net.3.weight", ...], "base": {...}} (the base noise on those
    weights only, DAT's last-layer setting). Each family's builder is in `NOISE_FAMILIES`.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict) or "family" not in spec:
        raise ValueError(f"a noise spec is a dict with a 'family' key, got {spec!r}")
    fam = spec["family"]
    if fam == "none":
        return None
    return NOISE_FAMILIES.get(str(fam))(spec)


def noise_from_profile(profile: Any, t_s: float = 0.0, **options: Any) -> WeightNoise:
    """Noise of a calibration NoiseProfile (object or path) read ``t_s`` seconds after programming."""
    from models.noise.profile_noise import ProfileNoise, load_profile_any

    return ProfileNoise.from_profile(load_profile_any(profile), t_s=t_s, **options)


__all__ = [
    "noise_from_spec",
    "noise_from_profile",
    "FAMILIES",
    "NOISE_FAMILIES",
    "AnalogMapping",
    "MappingChoice",
    "choose_mapping",
    "mapping_of_spec",
    "spec_from_options",
]

DEFAULT_BITS = 8  # weight resolution of the bit-sliced mapping when nothing else decides it (NeFT)
MAPPINGS = ("bitsliced", "analog")


@dataclass(frozen=True)
class MappingChoice:
    """How a profile's devices hold the weights: bit-sliced M-bit weights on the profile's K-bit devices, or analog pairs.

    This is what a model file trained on a profile records (in its noise spec: "mapping", "bits"), so that
    evaluation, SWIM planning and deployment map the weights the way training did.
    """

    name: str  # "bitsliced" | "analog"
    bits: int | None = None  # M, bit-sliced only

    def spec(self) -> dict[str, Any]:
        """The keys of a profile noise spec that fix the mapping."""
        return {"mapping": self.name, "bits": self.bits} if self.name == "bitsliced" else {"mapping": self.name}

    def describe(self, bits_per_device: int | None = None) -> str:
        if self.name == "analog":
            return "analog conductance pairs (one pair per weight)"
        on = f" on {bits_per_device}-bit devices" if bits_per_device else ""
        return f"bit-sliced {self.bits}-bit weights{on}"


def profile_is_continuous(profile: Any) -> bool:
    """True when the profile's noise laws hold at every conductance (fitted polynomials, closed-form families).

    Only the state-dependent family is defined per level; its devices are used as discrete levels.
    """
    return getattr(profile, "family", None) != "state_dependent"


def _fitting_bits(bits: int, k: int) -> str:
    lo = (bits // k) * k
    near = [b for b in (lo, lo + k) if b >= k]
    return " or ".join(str(b) for b in near)


def choose_mapping(
    profile: Any, mapping: str | None = None, bits: int | None = None, *, name: str = "the profile"
) -> MappingChoice:
    """The mapping a profile's devices support: the one asked for when it fits, else a one-line ValueError naming what would.

    ``mapping`` None or "auto": analog pairs for a continuous profile (`profile_is_continuous`), else (or when
    ``bits`` is given) bit-sliced with M = ``bits`` or the smallest multiple of the profile's K bits per
    device that is >= 8.
    """
    k = int(profile.bits_per_device)
    if mapping not in (None, "auto", *MAPPINGS):
        raise ValueError(f"unknown mapping {mapping!r} (auto, bitsliced or analog)")
    if mapping == "analog":
        if bits is not None:
            raise ValueError(
                "--bits sets the resolution of the bit-sliced mapping, the analog mapping has none: "
                "drop --bits or give --mapping bitsliced"
            )
        return MappingChoice("analog")
    if mapping in (None, "auto") and bits is None and profile_is_continuous(profile):
        return MappingChoice("analog")
    if bits is None:
        return MappingChoice("bitsliced", -(-DEFAULT_BITS // k) * k)
    if bits < 1 or bits % k:
        raise ValueError(
            f"--bits {bits} does not fit {name}: its devices hold {k} bits each, so bit-sliced weights need "
            f"a multiple of {k} (e.g. {_fitting_bits(max(bits, 1), k)}); or use --mapping analog"
        )
    return MappingChoice("bitsliced", int(bits))


def mapping_of_spec(spec: dict[str, Any] | None) -> MappingChoice | None:
    """The profile mapping a (stored) noise spec uses; None for noise not drawn from a profile.

    Specs written before the mapping was chosen per profile lack "bits" (and maybe "mapping"): they
    were trained bit-sliced with 8-bit weights, which is what this returns for them.
    """
    if not isinstance(spec, dict) or spec.get("family") != "profile":
        return None
    name = str(spec.get("mapping", "bitsliced"))
    return MappingChoice(name, int(spec.get("bits", DEFAULT_BITS))) if name == "bitsliced" else MappingChoice(name)


def mapping_for_model(
    recorded: MappingChoice,
    profile: Any,
    mapping: str | None = None,
    bits: int | None = None,
    *,
    model_name: str = "the model file",
    profile_name: str = "the profile",
) -> MappingChoice:
    """The model file's mapping, checked against explicit options (agree or a one-line error) and the profile's devices."""
    k = int(profile.bits_per_device)
    if mapping not in (None, "auto") and mapping != recorded.name:
        raise ValueError(
            f"{model_name} was trained with {recorded.describe()}; --mapping {mapping} contradicts it "
            "(leave --mapping out to use the model file's)"
        )
    if bits is not None and bits != recorded.bits:
        raise ValueError(
            f"{model_name} was trained with {recorded.describe()}; --bits {bits} contradicts it "
            "(leave --bits out to use the model file's)"
        )
    if recorded.bits is not None and recorded.bits % k:
        raise ValueError(
            f"{model_name} holds {recorded.describe()}, which {profile_name}'s {k}-bit devices cannot hold "
            f"({recorded.bits} is not a multiple of {k}): use the profile it was trained on, or retrain with "
            f"--profile {profile_name}"
        )
    return recorded


def spec_from_options(
    *,
    profile: str | None = None,
    t_s: float = 0.0,
    mapping: str | None = None,
    bits: int | None = None,
    recorded: MappingChoice | None = None,
    recorded_from: str = "the model file",
    sigma: float | None = None,
    device_model: str | None = None,
    lognormal: float | None = None,
    additive: float | None = None,
    censor: float | None = None,
    recentre: bool = False,
    noise_json: str | None = None,
) -> dict[str, Any] | None:
    """Turn the CLI's mutually exclusive noise options into one spec (None when none is given).

    With ``profile`` the spec fixes the mapping: ``recorded`` (a model file's, checked against ``mapping``
    and ``bits``) or else `choose_mapping` of the options. ``mapping``/``bits`` without a profile only
    make sense against a ``recorded`` mapping they must agree with.
    """
    import json

    given = [
        n
        for n, v in (
            ("--profile", profile),
            ("--sigma", sigma),
            ("--lognormal", lognormal),
            ("--additive", additive),
            ("--noise-json", noise_json),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give one noise source, not {' and '.join(given)}")
    if device_model is not None and sigma is None:
        raise ValueError("--device-model needs --sigma (the device sigma_d, a fraction of its full range)")
    asked = mapping not in (None, "auto") or bits is not None
    if profile is None and asked:
        if recorded is None:
            raise ValueError("--mapping and --bits choose how a --profile holds the weights: give --profile too")
        mapping_for_model(recorded, _NoDevices(), mapping, bits, model_name=recorded_from)
    spec: dict[str, Any] | None
    if profile is not None:
        from pathlib import Path

        from calibration.profile import load_profile

        prof = load_profile(profile)
        if recorded is not None:
            choice = mapping_for_model(recorded, prof, mapping, bits, model_name=recorded_from, profile_name=profile)
        else:
            choice = choose_mapping(prof, mapping, bits, name=profile)
        spec = {"family": "profile", "path": str(Path(profile).resolve()), "t_s": float(t_s), **choice.spec()}
    elif sigma is not None:
        spec = (
            {"family": "state_dependent", "model": device_model, "sigma": sigma}
            if device_model
            else {"family": "gaussian", "sigma": sigma}
        )
    elif lognormal is not None:
        spec = {"family": "lognormal", "sigma": lognormal}
    elif additive is not None:
        spec = {"family": "additive", "eta": additive}
    elif noise_json is not None:
        try:
            spec = json.loads(noise_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--noise-json is not valid JSON: {exc}") from None
    else:
        spec = None
    if censor is not None:
        if spec is None:
            raise ValueError("--censor needs a Gaussian noise source (--sigma or --additive)")
        spec = {"family": "censored", "lam": censor, "recentre": recentre, "base": spec}
    if spec is not None:
        noise_from_spec(spec)  # validate now: a bad spec fails before any training starts
    return spec


class _NoDevices:
    """A stand-in profile whose devices hold any resolution (checks of options against a model file alone)."""

    bits_per_device = 1
