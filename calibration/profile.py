"""The noise profile: one dataclass holding the device mapping and every fitted model, and its HDF5 file.

Units everywhere: siemens (S), seconds (s). The schema is documented in calibration/PROFILE.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from calibration.errors import ProfileError
from calibration.h5io import check_stored_sizes, read_dataclass, write_dataclass
from calibration.noise_terms import (
    EnduranceModel,
    FamilyFit,
    LevelTable,
    PolyFit,
    ProgrammingModel,
    Provenance,
    ReadNoiseModel,
    RelaxationModel,
    SpatialModel,
)
from firmware_protocol.device_presets import (
    IBM_RERAM_COEFFS_US,
    IBM_RERAM_READ_FRAC,
    IBM_RERAM_TIMES_S,
)
from firmware_protocol.device_presets import IBM_RERAM_G_MAX_S as IBM_RERAM_G_MAX_REF
from firmware_protocol.fileformat import FileFormat, atomic_write, software_version, utc_now

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IBM_RERAM_COEFFS_US",
    "IBM_RERAM_G_MAX_REF",
    "IBM_RERAM_READ_FRAC",
    "IBM_RERAM_TIMES_S",
    "PROFILE_FILE",
    "FamilyFit",
    "NoiseProfile",
    "ProfileError",
    "SpatialModel",
    "load_profile",
    "save_profile",
    "software_version",
    "utc_now",
]

PROFILE_FILE = FileFormat("rram-hil-noise-profile", "1.1", "an rram-hil noise profile")
FORMAT_NAME = PROFILE_FILE.name
FORMAT_VERSION = PROFILE_FILE.version
# Bounds of a chip's level table: 2^20 levels (8 MiB of float64 per table) is far beyond any RRAM device,
# and bit-sliced weights use at most 20 bits per device under it (--bits is at most 32 in all).
MAX_LEVELS = 2**20
MAX_BITS_PER_DEVICE = 20
PAPER_FAMILIES = ("gaussian", "additive", "lognormal", "state_dependent", "ibm_reram")
# Families whose programming noise is a closed-form law in family_params (the others use the stored models).
_FORMULA_FAMILIES = ("gaussian", "additive", "lognormal", "state_dependent")
# The ibm_reram family uses the IBM HWA-training supplement's B.2 ReRAM constants (sigma polynomials in
# uS of g/g_max fitted with g_max = 40 uS, at 1 s and 1 day; read noise 1 % of g_max), kept in
# firmware_protocol.device_presets and shared with the simulator.


@dataclass(eq=False)
class NoiseProfile:
    """Device mapping facts plus every fitted noise model of one chip (or of a paper's noise family).

    Measured profiles fill open_loop/verified/relaxation/read_noise/endurance/spatial/families; paper
    profiles set ``family`` and ``family_params`` (see ``from_paper``). Missing models are None.
    """

    g_min: float
    g_max: float
    n_levels: int
    bits_per_device: int
    levels_g: np.ndarray = field(default_factory=lambda: np.zeros(0))
    format_version: str = FORMAT_VERSION
    provenance: Provenance = field(default_factory=Provenance)
    family: str | None = None
    family_params: dict[str, Any] = field(default_factory=dict)
    open_loop: ProgrammingModel | None = None
    verified: ProgrammingModel | None = None
    relaxation_model: RelaxationModel | None = None
    read_noise: ReadNoiseModel | None = None
    endurance: EnduranceModel | None = None
    spatial: SpatialModel | None = None
    families: dict[str, FamilyFit] = field(default_factory=dict)
    stuck_fractions: tuple[float, float] = (0.0, 0.0)
    # Conductance (S) at which stuck-high / stuck-low cells read; None: at g_max / g_min. A cell shorted
    # at forming can read far above g_max, and its weight error scales with that value (format 1.1).
    stuck_g: tuple[float, float] | None = None

    # ------------------------------------------------------------------ evaluation API (S, s)
    def _programming(self, verified: bool) -> ProgrammingModel:
        model = self.verified if verified else self.open_loop
        if model is None:
            kind = "verified" if verified else "open-loop"
            raise ProfileError(f"this profile has no {kind} programming model")
        return model

    def programming_mean_error(self, g: np.ndarray, verified: bool = False) -> np.ndarray:
        """Mean of (programmed - target) conductance at target g (S), same shape as g."""
        g = np.asarray(g, dtype=np.float64)
        if self.family in ("gaussian", "additive", "state_dependent"):
            return np.zeros_like(g)
        if self.family == "lognormal":
            s = float(self.family_params["s"])
            return g * math.expm1(0.5 * s * s)
        return self._programming(verified).mean_error(g)

    def programming_sigma(self, g: np.ndarray, verified: bool = False) -> np.ndarray:
        """Standard deviation of the programmed conductance at target g (S, >= 0), same shape as g.

        For the lognormal family this is the exact standard deviation of g*exp(N(0, s^2)).
        """
        g = np.asarray(g, dtype=np.float64)
        fam = self.family
        if fam == "gaussian":
            return np.full_like(g, float(self.family_params["sigma"]) * self.g_max)
        if fam == "additive":
            return np.full_like(g, float(self.family_params["eta"]) * self.g_max)
        if fam == "lognormal":
            s2 = float(self.family_params["s"]) ** 2
            return np.abs(g) * math.exp(0.5 * s2) * math.sqrt(math.expm1(s2))
        if fam == "state_dependent":
            frac = np.asarray(self.family_params["level_sigma_frac"], dtype=np.float64)
            return frac[self.nearest_level(g)] * self.g_max
        return self._programming(verified).sigma(g)

    def nearest_level(self, g: np.ndarray) -> np.ndarray:
        """Index of the nearest entry of levels_g for each g."""
        if self.levels_g.size == 0:
            raise ProfileError("this profile has no levels_g")
        g = np.asarray(g, dtype=np.float64)
        return np.abs(g[..., None] - self.levels_g).argmin(axis=-1)

    def relaxation(self, g: np.ndarray, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(mean shift, extra sigma) in S accumulated from the programming read (t0) to t_s after programming."""
        g = np.asarray(g, dtype=np.float64)
        if self.relaxation_model is None:
            return np.zeros_like(g), np.zeros_like(g)
        return self.relaxation_model.shift(g, t_s), self.relaxation_model.extra_sigma(g, t_s)

    def device_error_moments(
        self, g: np.ndarray, verified: bool = False, t_s: float = 0.0, read: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (S) of read - target conductance for devices at target g read t_s after programming:
        programming, relaxation up to t_s and, with ``read``, one read's noise, counted once (Gaussian laws)."""
        g = np.asarray(g, dtype=np.float64)
        read_var = self.read_sigma(g) ** 2
        mean = np.asarray(self.programming_mean_error(g, verified=verified), dtype=np.float64)
        var = np.asarray(self.programming_sigma(g, verified=verified), dtype=np.float64) ** 2
        if self.programming_includes_read:  # the programming part alone
            var = np.clip(var - read_var, 0.0, None)
        if t_s > 0:
            shift, extra = self.relaxation(g, t_s)
            mean = mean + shift
            var = var + np.asarray(extra) ** 2
        if read:
            var = var + read_var
        return mean, np.sqrt(var)

    @property
    def programming_includes_read(self) -> bool:
        """Whether the programming sigmas hold one read's noise: a measured profile's come from one read per
        device (after t_read_s), a paper family's are the programming error alone (issue 16: count read noise once)."""
        return self.family is None

    def read_sigma(self, g: np.ndarray) -> np.ndarray:
        """Read-to-read noise sigma at conductance g (S); zeros if the profile has no read-noise model."""
        g = np.asarray(g, dtype=np.float64)
        if self.read_noise is None:
            return np.zeros_like(g)
        return self.read_noise.sigma(g)

    @property
    def stuck_conductances(self) -> tuple[float, float]:
        """(stuck-high, stuck-low) read conductance in S (g_max, g_min unless measured)."""
        return self.stuck_g if self.stuck_g is not None else (self.g_max, self.g_min)

    def pulses_per_device(self, verified: bool) -> float:
        """Mean programming pulses per device (open loop ~1); ProfileError if the profile does not know."""
        model = self.verified if verified else self.open_loop
        if model is not None and math.isfinite(model.pulses_mean) and model.pulses_mean > 0:
            return float(model.pulses_mean)
        key = "pulses_verified" if verified else "pulses_open_loop"
        value = self.family_params.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            return float(value)
        kind = "verified" if verified else "open-loop"
        raise ProfileError(f"this profile has no pulse count for {kind} programming")

    def best_family(self, criterion: str = "aic") -> str | None:
        """Name of the fitted paper family with the lowest AIC (or BIC); None when none were fitted."""
        if not self.families:
            return None
        if criterion not in ("aic", "bic"):
            raise ValueError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
        return min(self.families.values(), key=lambda f: getattr(f, criterion)).family

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_paper(
        cls,
        family: str,
        *,
        g_min: float = 1e-6,
        g_max: float = 40e-6,
        n_levels: int = 4,
        bits_per_device: int | None = None,
        read_noise: float | None = None,
        stuck_lrs: float = 0.0,
        stuck_hrs: float = 0.0,
        pulses_verified: float = float("nan"),
        provenance: Provenance | None = None,
        **params: Any,
    ) -> NoiseProfile:
        """A hand-written profile from a paper's noise family (no chip needed).

        family / params: gaussian(sigma: sigma_d as a fraction of g_max, NeFT), additive(eta: fraction
        of g_max, MTRD), lognormal(s: W*exp(N(0, s^2)), MTRD), state_dependent(sigma, t=4: NeFT IV-F,
        end levels sigma, inner levels t*sigma; or level_sigma=[...] fractions of g_max), ibm_reram(time:
        "1s" | "1d", IBM B.2 polynomials). read_noise is a fraction of g_max (ibm_reram default 0.01).
        """
        if family not in PAPER_FAMILIES:
            raise ProfileError(f"unknown noise family {family!r}; choose one of {', '.join(PAPER_FAMILIES)}")
        if not 2 <= int(n_levels) <= MAX_LEVELS:
            raise ProfileError(f"n_levels must be in [2, 2^{MAX_LEVELS.bit_length() - 1}], got {n_levels}")
        if bits_per_device is None:
            bits_per_device = max(1, int(math.floor(math.log2(max(n_levels, 2)))))
        levels = np.linspace(g_min, g_max, int(n_levels)) if n_levels >= 2 else np.zeros(0)
        if not _pulse_count(float(pulses_verified), positive=True):
            raise ProfileError(
                f"pulses_verified must be a finite number > 0 (or NaN: not measured), got {pulses_verified!r}"
            )
        fp: dict[str, Any] = {"pulses_open_loop": 1.0, "pulses_verified": float(pulses_verified)}
        expected = {
            "gaussian": {"sigma"},
            "additive": {"eta"},
            "lognormal": {"s"},
            "state_dependent": {"sigma", "t", "level_sigma"},
            "ibm_reram": {"time"},
        }[family]
        unknown = set(params) - expected
        if unknown:
            raise ProfileError(
                f"family {family} takes {', '.join(sorted(expected))}; got unknown {', '.join(sorted(unknown))}"
            )
        prof = cls(
            g_min=float(g_min),
            g_max=float(g_max),
            n_levels=int(n_levels),
            bits_per_device=int(bits_per_device),
            levels_g=levels,
            provenance=provenance
            or Provenance(
                created_utc=utc_now(), software_version=software_version(), notes=f"hand-written {family} profile"
            ),
            family=family,
            family_params=fp,
            stuck_fractions=(float(stuck_lrs), float(stuck_hrs)),
        )
        if family in ("gaussian", "additive", "lognormal"):
            (key,) = expected
            if key not in params:
                raise ProfileError(f"family {family} needs parameter {key}")
            fp[key] = _nonneg(key, params[key])
        elif family == "state_dependent":
            if "level_sigma" in params:
                frac = np.asarray(params["level_sigma"], dtype=np.float64)
                if frac.shape != (int(n_levels),):
                    raise ProfileError(f"level_sigma needs {n_levels} values (one per level), got {frac.size}")
            else:
                if "sigma" not in params:
                    raise ProfileError("family state_dependent needs sigma (and optionally t) or level_sigma")
                sigma = _nonneg("sigma", params["sigma"])
                t = _nonneg("t", params.get("t", 4.0))
                frac = np.full(int(n_levels), sigma * t)
                frac[0] = frac[-1] = sigma
                fp["sigma"], fp["t"] = sigma, t
            fp["level_sigma_frac"] = frac
        else:
            time = str(params.get("time", "1s"))
            if time not in IBM_RERAM_COEFFS_US:
                raise ProfileError(f"ibm_reram time must be one of {', '.join(IBM_RERAM_COEFFS_US)}, got {time!r}")
            fp["time"] = time
            fp["t_s"] = IBM_RERAM_TIMES_S[time]
            _fill_ibm_reram(prof, time, pulses_verified)
            if read_noise is None:
                read_noise = IBM_RERAM_READ_FRAC
        if read_noise is not None and read_noise > 0:
            fp["read_noise_frac"] = _nonneg("read_noise", read_noise)
            prof.read_noise = ReadNoiseModel(LevelTable(), PolyFit.constant(read_noise * g_max, g_max))
        prof.validate()
        return prof

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field for consistency; raise ProfileError naming the first problem."""
        if not (math.isfinite(self.g_min) and math.isfinite(self.g_max) and 0 <= self.g_min < self.g_max):
            raise ProfileError(f"need 0 <= g_min < g_max, got g_min={self.g_min}, g_max={self.g_max}")
        if not 2 <= self.n_levels <= MAX_LEVELS:
            raise ProfileError(f"n_levels must be in [2, 2^{MAX_LEVELS.bit_length() - 1}], got {self.n_levels}")
        if not 1 <= self.bits_per_device <= MAX_BITS_PER_DEVICE or 2**self.bits_per_device > self.n_levels:
            raise ProfileError(f"bits_per_device={self.bits_per_device} needs 1 <= 2^bits <= n_levels={self.n_levels}")
        if self.levels_g.ndim != 1 or not np.all(np.isfinite(self.levels_g)):
            raise ProfileError("levels_g must be a finite 1-D array")
        if self.levels_g.size not in (0, self.n_levels):
            raise ProfileError(
                f"levels_g must be empty or hold n_levels={self.n_levels} values, got {self.levels_g.size}"
            )
        if self.levels_g.size and np.any(np.diff(self.levels_g) <= 0):
            raise ProfileError("levels_g must be strictly increasing")
        lrs, hrs = self.stuck_fractions
        if not (0 <= lrs <= 1 and 0 <= hrs <= 1 and lrs + hrs <= 1):
            raise ProfileError(f"stuck_fractions must be in [0, 1] and sum to <= 1, got {self.stuck_fractions}")
        if self.stuck_g is not None and not all(math.isfinite(v) and v >= 0 for v in self.stuck_g):
            raise ProfileError(f"stuck_g must be two finite conductances >= 0 S, got {self.stuck_g}")
        for name in ("open_loop", "verified", "relaxation_model", "read_noise", "endurance", "spatial"):
            model = getattr(self, name)
            if model is not None:
                model.validate(f"/{name}")
        if self.family is not None:
            self._validate_family()
        if self.open_loop is not None and self.open_loop.verified:
            raise ProfileError("/open_loop is marked verified")
        if self.verified is not None and not self.verified.verified:
            raise ProfileError("/verified is not marked verified")
        for key, fit in self.families.items():
            if key != fit.family:
                raise ProfileError(f"/families/{key} holds family {fit.family!r}")
            fit.validate(f"/families/{key}")

    def _validate_family(self) -> None:
        fam, fp = self.family, self.family_params
        if fam not in PAPER_FAMILIES:
            raise ProfileError(f"unknown family {fam!r}")
        need = {
            "gaussian": ("sigma",),
            "additive": ("eta",),
            "lognormal": ("s",),
            "state_dependent": ("level_sigma_frac",),
            "ibm_reram": ("time",),
        }[fam]
        for key in need:
            if key not in fp:
                raise ProfileError(f"missing field /family_params/{key} for family {fam}")
        for key in ("sigma", "eta", "s", "t", "read_noise_frac"):
            if key in fp and not (isinstance(fp[key], float) and math.isfinite(fp[key]) and fp[key] >= 0):
                raise ProfileError(f"/family_params/{key} must be a finite number >= 0, got {fp[key]!r}")
        for key in ("pulses_open_loop", "pulses_verified"):  # NaN: not measured (PROFILE.md)
            if key in fp and not _pulse_count(fp[key], positive=True):
                raise ProfileError(
                    f"/family_params/{key} must be NaN (not measured) or a finite number > 0, got {fp[key]!r}"
                )
        if fam == "state_dependent":
            frac = fp["level_sigma_frac"]
            if (
                not isinstance(frac, np.ndarray)
                or frac.shape != self.levels_g.shape
                or not np.all(np.isfinite(frac) & (frac >= 0))
            ):
                raise ProfileError(
                    "/family_params/level_sigma_frac must hold one finite sigma >= 0 per level of levels_g"
                )
        if fam == "ibm_reram":
            if fp["time"] not in IBM_RERAM_COEFFS_US:
                raise ProfileError(
                    f"/family_params/time must be one of {', '.join(IBM_RERAM_COEFFS_US)}, got {fp['time']!r}"
                )
            if self.open_loop is None:
                raise ProfileError("ibm_reram profile lacks its /open_loop programming model")
            if self.verified is not None and "pulses_verified" in fp:
                a, b = float(fp["pulses_verified"]), self.verified.pulses_mean
                if not (a == b or (math.isnan(a) and math.isnan(b))):
                    raise ProfileError(
                        f"/family_params/pulses_verified ({a}) differs from /verified/pulses_mean ({b}): the file was altered"
                    )

    # ------------------------------------------------------------------ comparison
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoiseProfile):
            return NotImplemented
        return _deep_equal(self, other)


def _pulse_count(value: Any, positive: bool) -> bool:
    """True for NaN (not measured) or a finite count > 0 (>= 0 unless ``positive``)."""
    if not isinstance(value, float):
        return False
    return math.isnan(value) or (math.isfinite(value) and (value > 0 if positive else value >= 0))


def _nonneg(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ProfileError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ProfileError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _fill_ibm_reram(prof: NoiseProfile, time: str, pulses_verified: float) -> None:
    """Programming sigma = B.2 polynomial at ``time``; for 1 s also the 1 s -> 1 day growth as relaxation."""
    scale = 1e-6 * prof.g_max / IBM_RERAM_G_MAX_REF  # uS -> S, rescaled like aihwkit for another g_max
    coeffs = np.asarray(IBM_RERAM_COEFFS_US[time]) * scale
    k = coeffs.size
    empty = LevelTable()
    poly = PolyFit(coeffs, np.zeros((k, k)), prof.g_max)
    zero = PolyFit.constant(0.0, prof.g_max)
    t_s = IBM_RERAM_TIMES_S[time]
    prof.open_loop = ProgrammingModel(False, t_s, empty, zero, poly, pulses_mean=1.0, pulses_se=0.0)
    prof.verified = ProgrammingModel(True, t_s, empty, zero, poly, pulses_mean=float(pulses_verified))
    if time == "1s":
        c1d = np.asarray(IBM_RERAM_COEFFS_US["1d"]) * scale
        dvar = np.polynomial.polynomial.polysub(
            np.polynomial.polynomial.polymul(c1d, c1d), np.polynomial.polynomial.polymul(coeffs, coeffs)
        )
        s1sq = dvar / math.log10(IBM_RERAM_TIMES_S["1d"] / t_s)
        n = s1sq.size
        z = np.zeros(0)
        prof.relaxation_model = RelaxationModel(
            t0_s=t_s,
            levels_g=z,
            a=z,
            a_se=z,
            b=z,
            b_se=z,
            s0sq=z,
            s0sq_se=z,
            s1sq=z,
            s1sq_se=z,
            b_poly=zero,
            s1sq_poly=PolyFit(s1sq, np.zeros((n, n)), prof.g_max),
            t_max_s=IBM_RERAM_TIMES_S["1d"],
        )


def _deep_equal(a: Any, b: Any) -> bool:
    """Structural equality treating arrays elementwise and NaN == NaN."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(_deep_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        return a_arr.shape == b_arr.shape and bool(np.array_equal(a_arr, b_arr, equal_nan=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


# ---------------------------------------------------------------------- file IO
def save_profile(profile: NoiseProfile, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate and write ``profile`` to an HDF5 file atomically; refuse to replace a file unless overwrite."""
    path = Path(path)
    with atomic_write(path, force=overwrite, refusal="pass overwrite=True or --force to replace it") as tmp:
        profile.validate()
        stamp = PROFILE_FILE.stamp()
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = stamp["format"]
            write_dataclass(f, profile)  # also writes the profile's own format_version field, set right below
            f.attrs["format_version"] = stamp["format_version"]
    return path


def load_profile(path: str | os.PathLike) -> NoiseProfile:
    """Read and validate a profile; ProfileError (one line) for a missing, corrupt, incomplete or newer file."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ProfileError(f"{path}: not a readable HDF5 file (corrupt or truncated)") from None
    try:
        with f:
            version = PROFILE_FILE.check(f.attrs, str(path), ProfileError)
            if int(version.split(".")[0]) < PROFILE_FILE.major:
                raise ProfileError(
                    f"{path}: format {version} is older than {PROFILE_FILE.major}.x and no longer readable"
                )
            check_stored_sizes(f, str(path), ProfileError)
            profile = read_dataclass(f, NoiseProfile)
            profile.format_version = version
    except ProfileError as exc:
        msg = str(exc)
        raise ProfileError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except (OSError, KeyError, RuntimeError, TypeError, ValueError, ArithmeticError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProfileError(f"{path}: corrupt or truncated profile ({first})") from None
    try:
        profile.validate()
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return profile
