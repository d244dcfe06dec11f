"""Fitted noise models: plain dataclasses of numpy arrays (S, S^2, s) that know how to evaluate themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibration.errors import ProfileError

PIT_PROBS = np.linspace(0.0, 1.0, 101)


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass
class PolyFit:
    """y(g) = sum_i coeffs[i] * (g/g_ref)^i, coefficients in the unit of y, with their covariance.

    chi2_red is the reduced chi-square of the weighted fit (NaN when there were no spare degrees of freedom).
    g is clipped to [g_lo, g_hi] (the range of the fitted data; [0, g_ref] when g_hi is NaN), so the
    polynomial is held constant instead of extrapolated.
    """

    coeffs: np.ndarray
    cov: np.ndarray
    g_ref: float
    chi2_red: float = float("nan")
    g_lo: float = 0.0
    g_hi: float = float("nan")

    def __call__(self, g: np.ndarray) -> np.ndarray:
        """Evaluate at conductances g (S), clipped to the fitted range."""
        hi = self.g_ref if np.isnan(self.g_hi) else self.g_hi
        gn = np.clip(np.asarray(g, dtype=np.float64), self.g_lo, hi) / self.g_ref
        return np.polynomial.polynomial.polyval(gn, self.coeffs)

    @property
    def stderr(self) -> np.ndarray:
        """Standard errors of the coefficients."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    def validate(self, where: str) -> None:
        """Check shapes and finiteness."""
        d = self.coeffs.shape
        if self.coeffs.ndim != 1 or d[0] < 1:
            raise ProfileError(f"{where}/coeffs must be a non-empty 1-D array")
        if self.cov.shape != (d[0], d[0]):
            raise ProfileError(f"{where}/cov must be {d[0]}x{d[0]}, got {self.cov.shape}")
        if not np.all(np.isfinite(self.coeffs)):
            raise ProfileError(f"{where}/coeffs contains NaN or inf")
        if not (np.isfinite(self.g_ref) and self.g_ref > 0):
            raise ProfileError(f"{where}: g_ref must be a finite conductance > 0, got {self.g_ref}")
        if not (np.isfinite(self.g_lo) and self.g_lo >= 0 and (np.isnan(self.g_hi) or np.isfinite(self.g_hi))):
            raise ProfileError(f"{where}: need finite 0 <= g_lo <= g_hi (g_hi NaN: up to g_ref)")
        if not (np.isnan(self.g_hi) or self.g_hi >= self.g_lo):
            raise ProfileError(f"{where}: need 0 <= g_lo <= g_hi")

    @staticmethod
    def constant(value: float, g_ref: float) -> PolyFit:
        """An exact constant (zero uncertainty), for hand-written profiles."""
        return PolyFit(np.array([float(value)]), np.zeros((1, 1)), float(g_ref))


@dataclass
class LevelTable:
    """Per-level statistics of a quantity: mean and sigma with standard errors and sample counts."""

    levels_g: np.ndarray = field(default_factory=_empty)
    mean: np.ndarray = field(default_factory=_empty)
    mean_se: np.ndarray = field(default_factory=_empty)
    sigma: np.ndarray = field(default_factory=_empty)
    sigma_se: np.ndarray = field(default_factory=_empty)
    count: np.ndarray = field(default_factory=_empty)

    def validate(self, where: str) -> None:
        """All columns must have the same length; sigmas non-negative."""
        n = self.levels_g.shape
        for k in ("mean", "mean_se", "sigma", "sigma_se", "count"):
            if getattr(self, k).shape != n:
                raise ProfileError(f"{where}/{k} has shape {getattr(self, k).shape}, expected {n}")
        if np.any(self.sigma < 0):
            raise ProfileError(f"{where}/sigma has negative values")


@dataclass
class GateMap:
    """The gate calibration an open-loop law was measured with: conductance (S) of a few cells after a full RESET
    and one SET at each gate voltage (V), the table `hil.characterize.multilevel.calibrate_gate` records.

    The open-loop mean error of a levels run is this map's own error (its median of a few cells, interpolated):
    a deployment that takes its gates from the same map (`gate_for(targets, gate_v, g_s)`) programs as the law
    was measured, one that calibrates anew adds its own calibration's error (issue 16).
    """

    gate_v: np.ndarray  # (gates,) increasing SET gate voltages, V
    g_s: np.ndarray  # (gates, cells) conductance read right after each SET, S

    def validate(self, where: str) -> None:
        v, g = self.gate_v, self.g_s
        if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)) or np.any(np.diff(v) <= 0):
            raise ProfileError(f"{where}/gate_v must be >= 2 finite, increasing gate voltages (V)")
        if g.ndim != 2 or g.shape[0] != v.size or g.shape[1] < 1:
            raise ProfileError(f"{where}/g_s must be ({v.size}, cells) with >= 1 cell, got shape {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ProfileError(f"{where}/g_s contains NaN or inf")


@dataclass
class ReverifyRecord:
    """The program-settle-verify a verified law was measured with (`levels --reverify --settle --tol`) and what
    its touch-ups cost per device; both counts are already in the law's `pulses_mean` and error."""

    rounds: int  # settle-read-touch-up rounds after each write-verify (>= 1)
    settle_s: float  # wait before each re-check, s
    tol_s: float  # write-verify tolerance, the re-check's too, S
    touchups_mean: float  # touch-ups (re-verify write-verifies) per device, 0 to rounds
    touchup_pulses_mean: float  # of pulses_mean, the touch-ups' pulses per device

    def validate(self, where: str, pulses_mean: float) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ProfileError(f"{where}: rounds must be a whole number >= 1, got {self.rounds!r}")
        if not (np.isfinite(self.settle_s) and self.settle_s >= 0):
            raise ProfileError(f"{where}: settle_s must be a finite time >= 0 s, got {self.settle_s}")
        if not (np.isfinite(self.tol_s) and self.tol_s > 0):
            raise ProfileError(f"{where}: tol_s must be a finite conductance > 0 S, got {self.tol_s}")
        if not (np.isfinite(self.touchups_mean) and 0 <= self.touchups_mean <= self.rounds):
            raise ProfileError(
                f"{where}: touchups_mean must be from 0 to rounds ({self.rounds}), got {self.touchups_mean}"
            )
        ok = np.isfinite(self.touchup_pulses_mean) and self.touchup_pulses_mean >= 0
        if not ok or (np.isfinite(pulses_mean) and self.touchup_pulses_mean > pulses_mean):
            raise ProfileError(
                f"{where}: touchup_pulses_mean must be a finite number from 0 to pulses_mean ({pulses_mean}), "
                f"got {self.touchup_pulses_mean}"
            )


@dataclass
class ProgrammingModel:
    """Programming error (g - target, S) versus target: per-level table and c0..c4-style polynomials in g/g_max.

    `pulses_mean` counts every device the programming was asked to program; the table and polynomials hold the
    error of the devices it wrote (write-verify leaves a device already in tolerance alone: 0 pulses, an older
    state). `gate_map`: the gate calibration an open-loop law was measured with (None: not recorded).
    `reverify`: the program-settle-verify a verified law was measured with (None: write-verify once, as every
    profile before it); its touch-ups are in `pulses_mean` and in the error.
    """

    verified: bool
    t_read_s: float
    table: LevelTable
    mean_poly: PolyFit
    sigma_poly: PolyFit
    pulses_mean: float = float("nan")
    pulses_se: float = float("nan")
    gate_map: GateMap | None = None
    reverify: ReverifyRecord | None = None

    @property
    def reverify_rounds(self) -> int:
        """Re-verify rounds the law was measured with (0: write-verify once)."""
        return 0 if self.reverify is None else self.reverify.rounds

    @property
    def settle_s(self) -> float:
        """Settle (s) before each re-check the law was measured with (0.0 without re-verify)."""
        return 0.0 if self.reverify is None else self.reverify.settle_s

    @property
    def touchups_mean(self) -> float:
        """Measured touch-ups per device (0.0 without re-verify)."""
        return 0.0 if self.reverify is None else self.reverify.touchups_mean

    @property
    def touchup_pulses_mean(self) -> float:
        """Of `pulses_mean`, the touch-ups' pulses per device (0.0 without re-verify)."""
        return 0.0 if self.reverify is None else self.reverify.touchup_pulses_mean

    def mean_error(self, g: np.ndarray) -> np.ndarray:
        """Mean programming error at target g (S)."""
        return self.mean_poly(g)

    def sigma(self, g: np.ndarray) -> np.ndarray:
        """Standard deviation of the programming error at target g (S), never negative."""
        return np.clip(self.sigma_poly(g), 0.0, None)

    def validate(self, where: str) -> None:
        self.table.validate(f"{where}/table")
        self.mean_poly.validate(f"{where}/mean_poly")
        self.sigma_poly.validate(f"{where}/sigma_poly")
        if not (np.isfinite(self.t_read_s) and self.t_read_s > 0):
            raise ProfileError(f"{where}: t_read_s must be a finite time > 0 s, got {self.t_read_s}")
        for k in ("pulses_mean", "pulses_se"):  # NaN: the run recorded no pulse counts
            v = getattr(self, k)
            if not (np.isnan(v) or (np.isfinite(v) and v >= 0)):
                raise ProfileError(f"{where}: {k} must be NaN (not recorded) or a finite number >= 0, got {v}")
        if self.gate_map is not None:
            self.gate_map.validate(f"{where}/gate_map")
        if self.reverify is not None:
            if not self.verified:
                raise ProfileError(f"{where}/reverify: only a write-verify (verified) law has re-verify rounds")
            self.reverify.validate(f"{where}/reverify", self.pulses_mean)


@dataclass
class RelaxationModel:
    """Error versus log time per level: mu(t) = a + b*L, var(t) = s0sq + s1sq*L with L = log10(t/t0_s).

    a, s0sq are the error at t0 (programming error plus read noise); the relaxation returned to users is
    the change since t0: shift = b(g)*L and extra sigma = sqrt(max(s1sq(g), 0)*L), L clipped at 0, where
    b(g) and s1sq(g) are the polynomials in g/g_max fitted to the per-level values.
    """

    t0_s: float
    levels_g: np.ndarray
    a: np.ndarray
    a_se: np.ndarray
    b: np.ndarray
    b_se: np.ndarray
    s0sq: np.ndarray
    s0sq_se: np.ndarray
    s1sq: np.ndarray
    s1sq_se: np.ndarray
    b_poly: PolyFit
    s1sq_poly: PolyFit
    t_max_s: float = float("nan")

    def log_time(self, t_s: float) -> float:
        """L = log10(t/t0), 0 before t0."""
        if not t_s > 0:
            raise ValueError(f"time after programming must be > 0 s, got {t_s}")
        return max(float(np.log10(t_s / self.t0_s)), 0.0)

    def shift(self, g: np.ndarray, t_s: float) -> np.ndarray:
        """Mean conductance change between t0 and t_s (S)."""
        return self.b_poly(g) * self.log_time(t_s)

    def extra_sigma(self, g: np.ndarray, t_s: float) -> np.ndarray:
        """Extra spread accumulated between t0 and t_s (S)."""
        return np.sqrt(np.clip(self.s1sq_poly(g), 0.0, None) * self.log_time(t_s))

    def validate(self, where: str) -> None:
        n = self.levels_g.shape
        for k in ("a", "a_se", "b", "b_se", "s0sq", "s0sq_se", "s1sq", "s1sq_se"):
            if getattr(self, k).shape != n:
                raise ProfileError(f"{where}/{k} has shape {getattr(self, k).shape}, expected {n}")
        self.b_poly.validate(f"{where}/b_poly")
        self.s1sq_poly.validate(f"{where}/s1sq_poly")
        if not (np.isfinite(self.t0_s) and self.t0_s > 0):
            raise ProfileError(f"{where}: t0_s must be a finite time > 0 s, got {self.t0_s}")
        if not (np.isnan(self.t_max_s) or (np.isfinite(self.t_max_s) and self.t_max_s > 0)):
            raise ProfileError(f"{where}: t_max_s must be NaN (unknown) or a finite time > 0 s, got {self.t_max_s}")


@dataclass
class RTNStats:
    """Random-telegraph statistics from repeated reads: which cells read bimodally, by how much, how often."""

    n_cells: int
    fraction_bimodal: float
    fraction_se: float
    amplitude_median: float
    amplitude_rel_median: float
    switch_prob_median: float
    separation_threshold: float
    min_state_fraction: float
    false_alarm: float

    def validate(self, where: str) -> None:
        if not 0.0 <= self.fraction_bimodal <= 1.0:
            raise ProfileError(f"{where}: fraction_bimodal must be in [0, 1]")


@dataclass
class ReadNoiseModel:
    """Read-to-read sigma versus conductance (table of groups + polynomial in g/g_max), and RTN statistics."""

    table: LevelTable
    sigma_poly: PolyFit
    rtn: RTNStats | None = None

    def sigma(self, g: np.ndarray) -> np.ndarray:
        """Read-noise sigma at conductance g (S)."""
        return np.clip(self.sigma_poly(g), 0.0, None)

    def validate(self, where: str) -> None:
        self.table.validate(f"{where}/table")
        self.sigma_poly.validate(f"{where}/sigma_poly")
        if self.rtn is not None:
            self.rtn.validate(f"{where}/rtn")


@dataclass
class EnduranceModel:
    """Cycling statistics: log-normal LRS/HRS (natural-log sigmas, c2c and d2d), window vs cycles, Weibull life."""

    n_cells: int
    lrs_median: float
    lrs_sigma_c2c: float
    lrs_sigma_d2d: float
    hrs_median: float
    hrs_sigma_c2c: float
    hrs_sigma_d2d: float
    sigma_se: np.ndarray  # (4,) SEs of [lrs_c2c, lrs_d2d, hrs_c2c, hrs_d2d]
    cycles: np.ndarray
    window_median: np.ndarray
    n_alive: np.ndarray
    weibull_shape: float
    weibull_shape_se: float
    weibull_scale: float
    weibull_scale_se: float
    n_failed: int
    n_censored: int
    stuck_lrs_fraction: float
    stuck_hrs_fraction: float
    km_t: np.ndarray = field(default_factory=_empty)  # failure cycles (<= 200, subsampled)
    km_f: np.ndarray = field(default_factory=_empty)  # Kaplan-Meier failed fraction at km_t

    def validate(self, where: str) -> None:
        if self.cycles.shape != self.window_median.shape or self.cycles.shape != self.n_alive.shape:
            raise ProfileError(f"{where}: cycles, window_median and n_alive must have the same shape")
        if self.sigma_se.shape != (4,):
            raise ProfileError(f"{where}/sigma_se must have shape (4,)")
        if self.km_t.shape != self.km_f.shape:
            raise ProfileError(f"{where}: km_t and km_f differ in shape")
        for k in ("stuck_lrs_fraction", "stuck_hrs_fraction"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ProfileError(f"{where}: {k} must be in [0, 1]")


@dataclass
class SpatialModel:
    """Covariance of programming errors between cells (row-major cell order), in S^2: top-k eigenpairs (+ full)."""

    shape: tuple[int, int]
    eigvals: np.ndarray
    eigvecs: np.ndarray
    n_repeats: int
    total_variance: float
    full_cov: np.ndarray | None = None
    method: str = "repeats"  # "repeats" (sample covariance) | "stationary" (one error map)
    lag_cov: np.ndarray | None = None  # (2m+1, 2m+1) autocovariance by (row, col) lag, stationary only

    @property
    def low_rank_factor(self) -> np.ndarray:
        """A_k = V_k D_k^(1/2) (n_cells, k): error = A_k z with z ~ N(0, I_k) (DAT's sampler)."""
        return self.eigvecs * np.sqrt(np.clip(self.eigvals, 0.0, None))

    @property
    def explained_fraction(self) -> float:
        """Share of the total variance captured by the stored eigenpairs."""
        return float(np.sum(self.eigvals) / self.total_variance) if self.total_variance > 0 else float("nan")

    def validate(self, where: str) -> None:
        if self.shape[0] < 1 or self.shape[1] < 1:
            raise ProfileError(f"{where}: shape must be [rows >= 1, cols >= 1], got {list(self.shape)}")
        n = int(self.shape[0]) * int(self.shape[1])
        k = self.eigvals.shape[0] if self.eigvals.ndim == 1 else -1
        if k < 1 or self.eigvecs.shape != (n, k):
            raise ProfileError(f"{where}: eigvecs must be (rows*cols={n}, k={k}), got {self.eigvecs.shape}")
        for name in ("eigvals", "eigvecs", "full_cov", "lag_cov"):  # the sampler draws from these
            value = getattr(self, name)
            if value is not None and not np.all(np.isfinite(value)):
                raise ProfileError(f"{where}/{name} contains NaN or inf")
        if np.any(self.eigvals < -1e-12 * max(1.0, float(np.max(np.abs(self.eigvals))))):
            raise ProfileError(f"{where}: eigvals must be >= 0")
        if not (np.isfinite(self.total_variance) and self.total_variance >= 0):
            raise ProfileError(f"{where}: total_variance must be a finite variance >= 0 S^2, got {self.total_variance}")
        if self.full_cov is not None and self.full_cov.shape != (n, n):
            raise ProfileError(f"{where}: full_cov must be {n}x{n}, got {self.full_cov.shape}")
        if self.method not in ("repeats", "stationary"):
            raise ProfileError(f"{where}: method must be 'repeats' or 'stationary', got {self.method!r}")
        if self.lag_cov is not None and (
            self.lag_cov.ndim != 2 or self.lag_cov.shape[0] % 2 != 1 or self.lag_cov.shape[0] != self.lag_cov.shape[1]
        ):
            raise ProfileError(f"{where}: lag_cov must be a square (2m+1)x(2m+1) array")


@dataclass
class FamilyFit:
    """One paper noise family fitted to programming errors, with its goodness of fit.

    params/param_se: scalar parameters (sigma fractions of g_max, log-sigma); levels_g and
    level_sigma_frac are filled for the per-level family only. ks is the Kolmogorov-Smirnov statistic of
    the probability-integral transform against U(0,1), whose quantiles at PIT_PROBS are kept for plots; aic = 2k - 2 loglik; bic = k ln n - 2 loglik.
    """

    family: str
    params: dict[str, float]
    param_se: dict[str, float]
    n_params: int
    n: int
    loglik: float
    aic: float
    bic: float
    ks: float
    ks_pvalue: float
    levels_g: np.ndarray = field(default_factory=_empty)
    level_sigma_frac: np.ndarray = field(default_factory=_empty)
    pit_quantiles: np.ndarray = field(default_factory=_empty)  # quantiles of F(g) at PIT_PROBS (P-P plot)

    def validate(self, where: str) -> None:
        if self.pit_quantiles.size not in (0, PIT_PROBS.size):
            raise ProfileError(f"{where}/pit_quantiles must hold {PIT_PROBS.size} values")
        if self.levels_g.shape != self.level_sigma_frac.shape:
            raise ProfileError(f"{where}: levels_g and level_sigma_frac differ in shape")


@dataclass
class Provenance:
    """Where a profile came from."""

    run_files: list[str] = field(default_factory=list)
    board_id: str = ""
    measured_dates: list[str] = field(default_factory=list)
    created_utc: str = ""
    software_version: str = ""
    notes: str = ""


def as_plain(value: Any) -> Any:
    """Numpy scalars/arrays to Python floats/lists (for JSON)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
