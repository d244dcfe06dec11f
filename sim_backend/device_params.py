"""Ground-truth parameters of a simulated 1T1R HfO2 RRAM chip: every default documented with its origin.

Units: volts, nanoseconds for pulse widths, seconds for time, siemens for conductance, amperes for
currents.  "Conductance" always means the chord conductance read at ``v_read_ref`` (0.1 V).
"ln-sigma" means the standard deviation of the natural log of a log-normal quantity.

The laws the simulator follows (and that a calibration step should recover) are:

* NMOS compliance:  I_cc(Vg) = min(k_n * max(Vg - V_th, 0)^2, i_cc_max)            (square law)
* LRS after a full SET:  ln G = ln(I_cc / v_c) + d_lrs + lrs_sigma_c2c * z,  d_lrs ~ N(0, lrs_sigma_d2d^2)
* HRS after a full RESET: ln G = ln(g_hrs_ref) - (|V| - v_hrs_ref) / v_hrs_scale + d_hrs + hrs_sigma_c2c * z,
  d_hrs ~ N(0, hrs_sigma_d2d^2)
* pulse kinetics (partial switching): fraction f = 1 - exp(-xi * width / tau(V)),
  tau(V) = tau0 * exp(-(|V| - V_th_cell) / v_kin), ln xi ~ N(0, step_sigma^2); a SET moves ln G a
  fraction f of the way up to its (noisy) LRS target, a RESET a fraction f of the way down to its
  (noisy) HRS target; a pulse never moves G away from its target.
* wear (window narrowing) after n cycles: ln G_LRS -= a_lrs * log10(1 + n / n_w),
  ln G_HRS += a_hrs * log10(1 + n / n_w); at n = N_f ~ Weibull(shape, scale) the cell sticks.
* relaxation after programming to g0 at t_p, with L = log10(1 + (t - t_p) / t0(g0)):
  G(t) = g0 + mu(g0) * L + sigma_r(g0) * B(L), B a standard Brownian motion in L, so
  G(t) - g0 ~ N(mu(g0) L, sigma_r(g0)^2 L); t0 and sigma_r are tables over g0 (log-g interpolation),
  anchored so that write-verify error plus relaxation equals IBM's ReRAM sigma at 1 s and 1 day
  (`ibm_anchored_relaxation`); mu = 0 by default.
* read: I = G * V * S(V)/S(v_read_ref) with S(V) = sinh(V/v_nl)/(V/v_nl), times (1 - a_rtn * s_rtn(t))
  for cells with a two-state telegraph trap, plus white noise N(0, (read_noise_frac * g_max * V)^2).
* spatially correlated gain (optional, off by default): every LRS and HRS target above (forming's too)
  gets ln G += s(r, c), s a stationary Gaussian field on the array with
  Cov(s(r, c), s(r', c')) = spatial_sigma^2 * exp(-(|r - r'| + |c - c'|) / spatial_length_cells).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

# IBM HWA-training supplement, section B.2: 4th-order polynomial fits (in uS, argument g/g_max) of
# the ReRAM programming-plus-relaxation error sigma, measured 1 s and 1 day after programming
# (written once in firmware_protocol.device_presets, shared with the paper noise profiles).
from firmware_protocol.device_presets import IBM_RERAM_G_MAX_S, IBM_RERAM_SIGMA_1DAY_US, IBM_RERAM_SIGMA_1S_US

__all__ = [
    "IBM_RERAM_G_MAX_S",
    "IBM_RERAM_SIGMA_1DAY_US",
    "IBM_RERAM_SIGMA_1S_US",
    "RELAX_G_NODES_US",
    "SIM_WV_SIGMA_US",
    "DeviceParams",
    "ibm_anchored_relaxation",
    "ibm_reram_sigma",
]

_SECONDS_PER_DAY = 86400.0


def ibm_reram_sigma(g: np.ndarray | float, coeffs: tuple[float, ...], g_max: float = IBM_RERAM_G_MAX_S) -> np.ndarray:
    """IBM polynomial sigma (siemens) of the ReRAM weight error at conductance g (siemens)."""
    gn = np.clip(np.asarray(g, dtype=float) / g_max, 0.0, 1.0)
    return 1e-6 * np.polynomial.polynomial.polyval(gn, np.asarray(coeffs))


# Conductance nodes (uS) of the relaxation tables: every 2 uS over the window, denser below 8 uS where
# the IBM sigmas change fastest; log-g interpolation between nodes, clamped beyond the end nodes.
RELAX_G_NODES_US: tuple[float, ...] = (
    1,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    12,
    14,
    16,
    18,
    20,
    22,
    24,
    26,
    28,
    30,
    32,
    34,
    36,
    38,
    40,
)

# sd (uS) of the true conductance (no read noise) at the accepting verify read of this simulator's default
# write-verify (tolerance 0.8 uS = 2 % of g_max, 100 pulses, default PulseRamp, verify at 0.1 V), converged
# cells freshly programmed from far away (a full SET above targets below 3 uS, a deep RESET below the others):
# the programming error that IBM's totals already contain.  Measured on 6 chips (seeds 101-106, 64x64, ~1,000
# cells per node, standard error ~2.2 %) by `python -m tests.sim_backend.test_relaxation_anchor`.
SIM_WV_SIGMA_US: tuple[float, ...] = (
    0.38, 0.44, 0.50, 0.74, 0.74, 0.73, 0.72, 0.69, 0.73, 0.73, 0.71, 0.69,
    0.74, 0.75, 0.72, 0.76, 0.73, 0.79, 0.78, 0.76, 0.79, 0.79, 0.79, 0.82,
)  # fmt: skip


def _relax_clock_ratio(t0_s: float, t_short: float, t_long: float) -> float:
    """L(t_short) / L(t_long) of the clock L = log10(1 + t / t0): falls from 1 (t0 -> 0) to t_short / t_long."""
    return float(np.log10(1.0 + t_short / t0_s) / np.log10(1.0 + t_long / t0_s))


def ibm_anchored_relaxation(
    g_us: tuple[float, ...], wv_sigma_us: tuple[float, ...], t_short_s: float = 1.0, t_long_s: float = _SECONDS_PER_DAY
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(t0 in s, sigma_r in uS per sqrt(decade)) per conductance so that wv^2 + sigma_r^2 L(t) = IBM(t)^2 at 1 s and 1 day.

    The ratio L(1 s) / L(1 day) = (IBM_1s^2 - wv^2) / (IBM_1d^2 - wv^2) fixes t0 (it falls monotonically in t0),
    then sigma_r^2 = (IBM_1d^2 - wv^2) / L(1 day).  Values are rounded to 4 significant digits so that the
    physics fingerprint does not depend on the machine's last-bit arithmetic.
    """
    from scipy import optimize  # only to re-derive the tables (tests, calibration): not on the import path

    t0s, sigmas = [], []
    for g, wv in zip(g_us, wv_sigma_us, strict=True):
        s1 = float(ibm_reram_sigma(g * 1e-6, IBM_RERAM_SIGMA_1S_US)) * 1e6
        sd = float(ibm_reram_sigma(g * 1e-6, IBM_RERAM_SIGMA_1DAY_US)) * 1e6
        ratio = (s1 * s1 - wv * wv) / (sd * sd - wv * wv) if sd > wv else -1.0
        if not t_short_s / t_long_s < ratio < 1.0:
            raise ValueError(
                f"no relaxation reaches IBM's sigmas at {g} uS from a write-verify sigma of {wv} uS "
                f"(IBM {s1:.3f} uS at {t_short_s} s, {sd:.3f} uS at {t_long_s} s): lower the write-verify sigma"
            )
        log_t0 = optimize.brentq(lambda x, r=ratio: _relax_clock_ratio(10.0**x, t_short_s, t_long_s) - r, -15.0, 15.0)
        t0 = 10.0**log_t0
        sigma = np.sqrt((sd * sd - wv * wv) / np.log10(1.0 + t_long_s / t0))
        t0s.append(float(f"{t0:.4g}"))
        sigmas.append(float(f"{sigma:.4g}"))
    return tuple(t0s), tuple(sigmas)


# = ibm_anchored_relaxation(RELAX_G_NODES_US, SIM_WV_SIGMA_US), written out so that importing the simulator
# needs no root finder (tests/sim_backend/test_relaxation_anchor.py checks that they agree).
_RELAX_T0_NODES_S: tuple[float, ...] = (
    0.01241, 0.006336, 0.004137, 0.005586, 0.002577, 0.001758, 0.001537, 0.00169, 0.002713, 0.004368, 0.007008,
    0.01119, 0.01926, 0.03009, 0.04221, 0.06311, 0.0798, 0.114, 0.1369, 0.1557, 0.1988, 0.2438, 0.3276, 0.6215,
)  # fmt: skip
_RELAX_SIGMA_NODES_US: tuple[float, ...] = (
    0.4441, 0.5213, 0.5945, 0.7296, 0.8506, 0.9588, 1.055, 1.214, 1.334, 1.419, 1.475, 1.507,
    1.52, 1.517, 1.501, 1.478, 1.448, 1.414, 1.376, 1.336, 1.293, 1.247, 1.196, 1.143,
)  # fmt: skip


@dataclass(frozen=True)
class DeviceParams:
    """Physics of a simulated 1T1R HfO2 array (6 nm HfO2 filamentary cells, read at 0.1 V); see module doc for the laws."""

    # --- conductance window ------------------------------------------------------------------
    # Usable analog window of the IBM ReRAM fit (g_max = 40 uS, supplement B.2); 1 uS is the usual
    # lower edge of HfO2 multilevel windows (about 1 MOhm at 0.1 V), giving a 40x window.
    g_min: float = 1e-6
    g_max: float = 40e-6
    # Read voltage at which "conductance" is defined; 0.1 V is low enough not to disturb HfO2 cells.
    v_read_ref: float = 0.1
    # Hard floor for any conductance (keeps relaxation/noise from producing G <= 0).
    g_floor: float = 1e-9

    # --- pristine state and forming -----------------------------------------------------------
    # Pristine (unformed) cells leak like a thin dielectric: tens of nS at 0.1 V; log-normal d2d.
    g_pristine_median: float = 10e-9
    g_pristine_sigma: float = 0.5
    # Forming voltage across 1T1R cells with ~5-6 nm HfO2 is typically 2.5-3.5 V at microsecond
    # pulses; normal d2d spread of a few percent.
    v_form_mean: float = 3.0
    v_form_sd: float = 0.12
    # Voltage-time trade-off of forming: threshold drops by this many volts per decade of width
    # above v_form_width_ref_ns (and rises for shorter pulses).
    v_form_per_decade: float = 0.1
    v_form_width_ref_ns: float = 1000.0
    # Cells that never form at any voltage the board can apply (forming yield loss of kb arrays is
    # typically of order 1-5 %).
    form_fail_frac: float = 0.02
    # Cells stuck from the start (manufacturing defects): shorted (stuck LRS) or open (stuck HRS);
    # sub-percent each, as is typical of reported array bit maps.
    stuck_lrs_frac: float = 0.005
    stuck_hrs_frac: float = 0.005
    # Conductance of start-stuck cells: shorted cells read above g_max, open cells near g_min/3.
    g_stuck_lrs_median: float = 60e-6
    g_stuck_hrs_median: float = 0.3e-6
    g_stuck_sigma: float = 0.3

    # --- access transistor (compliance) -------------------------------------------------------
    # Square-law NMOS in saturation: I_cc = k_n (Vg - V_th)^2, k_n = 50 uA/V^2 and V_th = 0.6 V are
    # those of a near-minimum-width thick-oxide NMOS; 500 uA is the board's maximum compliance.
    nmos_k: float = 50e-6
    nmos_vth: float = 0.6
    i_cc_max: float = 500e-6

    # --- SET (LRS) ----------------------------------------------------------------------------
    # "Universal" filamentary law G_LRS = I_cc / V_c with V_c of a few tenths of a volt: the
    # filament grows until the cell voltage drops to V_c at the compliance current.
    lrs_v_c: float = 0.4
    # LRS is tight: c2c ln-sigma 0.08 (about 8 % CV) and d2d ln-sigma 0.10 are typical of HfO2 1T1R.
    lrs_sigma_c2c: float = 0.08
    lrs_sigma_d2d: float = 0.10
    # SET kinetics: tau = tau0 at the cell's SET voltage, e-fold per v_kin (about 1 decade of
    # switching time per 140 mV: the voltage-time dilemma of filamentary switching).
    v_set_mean: float = 0.9
    v_set_sd: float = 0.04

    # --- RESET (HRS) --------------------------------------------------------------------------
    # HRS depth grows exponentially with |V_reset| (the ruptured gap grows linearly with the stop
    # voltage): 2 uS at 1.5 V, one e-fold per 0.25 V (one decade per ~0.58 V).
    g_hrs_ref: float = 2e-6
    v_hrs_ref: float = 1.5
    v_hrs_scale: float = 0.25
    # HRS is much broader than LRS (gap-size variation): c2c ln-sigma 0.35, d2d ln-sigma 0.20.
    hrs_sigma_c2c: float = 0.35
    hrs_sigma_d2d: float = 0.20
    v_reset_mean: float = 0.8
    v_reset_sd: float = 0.04

    # --- shared pulse kinetics ----------------------------------------------------------------
    tau0_ns: float = 100.0
    v_kin: float = 0.06
    # Cycle-to-cycle randomness of the switching rate (ln-sigma of xi): stochastic step sizes.
    step_sigma: float = 0.3
    # Changes smaller than this fraction of g_max are treated as disturbs: they shift the
    # programmed value but do not restart the relaxation clock.
    relax_restart_frac: float = 1e-3

    # --- I-V nonlinearity ---------------------------------------------------------------------
    # sinh conduction with V_nl = 0.6 V: 0.5 % nonlinearity at 0.1 V, about 3x at 1.5 V.
    v_nl: float = 0.6

    # --- read noise ---------------------------------------------------------------------------
    # Conductance-independent white read noise of 1 % of g_max (IBM supplement B.2).
    read_noise_frac: float = 0.01
    # Random telegraph noise: fraction of cells with an active trap, relative amplitude
    # (log-normal median and ln-sigma) and log-uniform mean dwell times; a few % amplitude on a
    # minority of cells is typical of HfO2 filaments read at low bias.
    rtn_cell_frac: float = 0.2
    rtn_amp_median: float = 0.03
    rtn_amp_sigma: float = 0.5
    rtn_tau_min_s: float = 1e-4
    rtn_tau_max_s: float = 1.0

    # --- relaxation (retention) ---------------------------------------------------------------
    # Log-time relaxation with a per-conductance clock: L = log10(1 + dt / t0(g0)), variance
    # sigma_r(g0)^2 L.  IBM's B.2 polynomials are the TOTAL error after write-verify (the ReRAM data
    # "combines programming noise, conductance relaxation, and 1/f noise"), so the relaxation is what
    # is left after this simulator's own write-verify error SIM_WV_SIGMA_US: at every node
    # wv^2 + sigma_r^2 L(1 s) = IBM_1s^2 and wv^2 + sigma_r^2 L(1 day) = IBM_1d^2 (ibm_anchored_relaxation).
    # One t0 for every g cannot do it (IBM's 1 s / 1 day ratio runs from 0.64 at 4 uS to 0.41 at 40 uS):
    # t0 runs from ~1.5 ms (6 uS) to ~0.6 s (40 uS).  Tables at relax_g_nodes_us (uS), interpolated in
    # log g (log t0, linear sigma_r), clamped beyond the end nodes; below g_min sigma_r scales down in
    # proportion to g0/g_min (deep HRS).
    relax_g_nodes_us: tuple[float, ...] = RELAX_G_NODES_US
    relax_t0_nodes_s: tuple[float, ...] = _RELAX_T0_NODES_S
    relax_sigma_nodes_us: tuple[float, ...] = _RELAX_SIGMA_NODES_US
    # Mean drift per decade unit of L (uS), polynomial in g0/g_max: zero, as IBM assumes for ReRAM ("no
    # mean drift is expected", B.2), so the IBM variance budget above is the whole error.  A nonzero
    # drift moves the cells of a level nearly alike: it shifts their mean and is not in that budget.
    relax_mu_coeffs_us: tuple[float, ...] = (0.0, 0.0)

    # --- endurance ----------------------------------------------------------------------------
    # Cycles to failure ~ Weibull(shape, scale): array-level HfO2 endurance of 1e6-1e7 cycles
    # with Weibull slopes of order 1-2.
    weibull_shape: float = 1.3
    weibull_scale: float = 5e6
    # Fraction of worn-out cells that end stuck at LRS (RESET failure); the rest end stuck at HRS.
    fail_lrs_frac: float = 0.6
    # Window narrowing: ln G_LRS falls by a_lrs and ln G_HRS rises by a_hrs per decade of cycles
    # beyond n_w (HRS degrades faster than LRS, as commonly observed).
    wear_a_lrs: float = 0.05
    wear_a_hrs: float = 0.35
    wear_n0: float = 1e3

    # --- spatially correlated device-to-device gain (optional) --------------------------------------
    # Neighbouring cells share local process conditions (film thickness, vacancy density, access-line
    # resistance), so their conductances are alike beyond the independent d2d spread: "neighboring ReRAM
    # cells might show more similar noise characteristics due to shared local conditions and process-induced
    # variations" (DAT, section I); spatial variations "may exhibit both localized and widespread
    # correlations" (NEFT, section II.B). Read here as a multiplicative gain exp(s(r, c)) on the conductance a
    # SET, a RESET or forming drives the cell toward (ln target += s, like lrs_d2d and hrs_d2d but shared
    # with the neighbours): open-loop programming shows it in full, write-verify reads the cell and corrects
    # it (at the cost of pulses). s is a stationary Gaussian field, covariance spatial_sigma^2 *
    # exp(-(|dr| + |dc|) / spatial_length_cells) (separable exponential: lag-1 correlation along a row or a
    # column exp(-1 / spatial_length_cells)), drawn from its own per-site stream, so the other draws of a
    # seed do not change. Neither paper gives a size: off (0) by default, so every seed's chip is as it was;
    # 0.05 (a 5 % gain sd, half the independent LRS d2d spread) is a mild field.
    spatial_sigma: float = 0.0  # sd of ln gain (0.05 = 5 % of g)
    spatial_length_cells: float = 8.0  # correlation length (cells) of the exponential covariance

    # --- virtual clock --------------------------------------------------------------------------
    # One cell at a time: each pulse costs its width plus 1 us of set-up, each read 10 us
    # (settling + ADC conversion).
    pulse_overhead_s: float = 1e-6
    read_overhead_s: float = 10e-6

    def __post_init__(self) -> None:
        """Reject physically meaningless values with a one-line message naming the field."""
        positive = (
            "g_min g_max v_read_ref g_floor g_pristine_median v_form_mean v_form_width_ref_ns "
            "g_stuck_lrs_median g_stuck_hrs_median nmos_k i_cc_max lrs_v_c g_hrs_ref v_hrs_scale "
            "tau0_ns v_kin v_nl rtn_tau_min_s rtn_tau_max_s weibull_shape weibull_scale wear_n0 spatial_length_cells"
        ).split()
        for name in positive:
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"DeviceParams.{name} must be a positive finite number, got {value!r}")
        non_negative = (
            "g_pristine_sigma v_form_sd v_form_per_decade g_stuck_sigma nmos_vth lrs_sigma_c2c lrs_sigma_d2d "
            "v_set_sd hrs_sigma_c2c hrs_sigma_d2d v_reset_sd step_sigma relax_restart_frac read_noise_frac "
            "rtn_amp_median rtn_amp_sigma wear_a_lrs wear_a_hrs pulse_overhead_s read_overhead_s spatial_sigma"
        ).split()
        for name in non_negative:
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"DeviceParams.{name} must be a non-negative finite number, got {value!r}")
        for name in ("form_fail_frac", "stuck_lrs_frac", "stuck_hrs_frac", "rtn_cell_frac", "fail_lrs_frac"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DeviceParams.{name} must be a fraction in [0, 1], got {value!r}")
        if self.stuck_lrs_frac + self.stuck_hrs_frac > 1.0:
            raise ValueError("DeviceParams.stuck_lrs_frac + stuck_hrs_frac must not exceed 1")
        if self.g_min >= self.g_max:
            raise ValueError(f"DeviceParams.g_min ({self.g_min}) must be below g_max ({self.g_max})")
        if self.rtn_tau_min_s > self.rtn_tau_max_s:
            raise ValueError("DeviceParams.rtn_tau_min_s must not exceed rtn_tau_max_s")
        self._check_relaxation_tables()

    def _check_relaxation_tables(self) -> None:
        """Relaxation tables: equal lengths, increasing positive nodes, positive t0, non-negative sigma."""
        nodes, t0, sig = (np.asarray(v, dtype=float) for v in self.relax_nodes())
        if nodes.size == 0 or not nodes.size == t0.size == sig.size:
            raise ValueError(
                "DeviceParams.relax_g_nodes_us, relax_t0_nodes_s and relax_sigma_nodes_us must be non-empty and of "
                f"equal length, got {nodes.size}, {t0.size} and {sig.size}"
            )
        if not (np.all(np.isfinite(nodes)) and np.all(nodes > 0) and np.all(np.diff(nodes) > 0)):
            raise ValueError(
                f"DeviceParams.relax_g_nodes_us must be positive and increasing, got {self.relax_g_nodes_us}"
            )
        if not (np.all(np.isfinite(t0)) and np.all(t0 > 0)):
            raise ValueError(
                f"DeviceParams.relax_t0_nodes_s must be positive finite numbers, got {self.relax_t0_nodes_s}"
            )
        if not (np.all(np.isfinite(sig)) and np.all(sig >= 0)):
            raise ValueError(
                f"DeviceParams.relax_sigma_nodes_us must be non-negative finite numbers, got {self.relax_sigma_nodes_us}"
            )
        if len(self.relax_mu_coeffs_us) == 0:
            raise ValueError("DeviceParams.relax_mu_coeffs_us must not be empty (use (0.0,) for no drift)")

    def relax_nodes(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """The relaxation tables (g nodes in uS, t0 in s, sigma_r in uS per sqrt(decade))."""
        return self.relax_g_nodes_us, self.relax_t0_nodes_s, self.relax_sigma_nodes_us

    # --- closed-form laws (used by the model and documented for calibration) -----------------
    def i_cc(self, v_gate: np.ndarray | float) -> np.ndarray:
        """Compliance current (A) of the access NMOS at gate voltage v_gate (square law, clipped)."""
        vov = np.maximum(np.asarray(v_gate, dtype=float) - self.nmos_vth, 0.0)
        return np.minimum(self.nmos_k * vov * vov, self.i_cc_max)

    def g_lrs(self, v_gate: np.ndarray | float) -> np.ndarray:
        """Median LRS conductance (S) of a fresh cell after a full SET at gate voltage v_gate."""
        return np.maximum(self.i_cc(v_gate) / self.lrs_v_c, self.g_floor)

    def g_hrs(self, v_reset: np.ndarray | float) -> np.ndarray:
        """Median HRS conductance (S) of a fresh cell after a full RESET at |v_reset|."""
        dv = np.abs(np.asarray(v_reset, dtype=float)) - self.v_hrs_ref
        return self.g_hrs_ref * np.exp(-dv / self.v_hrs_scale)

    def _relax_interp(self, g0: np.ndarray, table: np.ndarray) -> np.ndarray:
        """A relaxation table interpolated linearly in log g0, clamped beyond the end nodes."""
        x = np.log(np.maximum(g0, self.g_floor) * 1e6)
        return np.interp(x, np.log(np.asarray(self.relax_g_nodes_us, dtype=float)), table)

    def relax_t0(self, g0: np.ndarray | float) -> np.ndarray:
        """Time constant t0 (s) of the relaxation clock of a cell programmed to g0 (log t0 interpolated in log g)."""
        g0 = np.asarray(g0, dtype=float)
        return np.exp(self._relax_interp(g0, np.log(np.asarray(self.relax_t0_nodes_s, dtype=float))))

    def relax_sigma(self, g0: np.ndarray | float) -> np.ndarray:
        """Relaxation sigma (S per sqrt of a decade unit of L) for a cell programmed to g0."""
        g0 = np.asarray(g0, dtype=float)
        sig = 1e-6 * self._relax_interp(g0, np.asarray(self.relax_sigma_nodes_us, dtype=float))
        return np.maximum(sig, 0.0) * np.minimum(1.0, g0 / self.g_min)

    def relax_mu(self, g0: np.ndarray | float) -> np.ndarray:
        """Relaxation mean drift (S per decade unit of L) for a cell programmed to g0."""
        g0 = np.asarray(g0, dtype=float)
        gn = np.clip(g0 / self.g_max, 0.0, 1.0)
        mu = 1e-6 * np.polynomial.polynomial.polyval(gn, np.asarray(self.relax_mu_coeffs_us))
        return mu * np.minimum(1.0, g0 / self.g_min)

    def relax_log_time(self, dt_s: np.ndarray | float, g0: np.ndarray | float) -> np.ndarray:
        """Relaxation clock L = log10(1 + dt / t0(g0)) for time dt (s) since programming a cell to g0."""
        return np.log10(1.0 + np.maximum(np.asarray(dt_s, dtype=float), 0.0) / self.relax_t0(g0))

    def relax_variance(self, g0: np.ndarray | float, dt_s: np.ndarray | float) -> np.ndarray:
        """Variance (S^2) relaxation adds to a cell programmed to g0, dt (s) later: sigma_r(g0)^2 L(dt; t0(g0))."""
        return self.relax_sigma(g0) ** 2 * self.relax_log_time(dt_s, g0)

    def wear_shift(self, cycles: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(ln-shift of LRS, ln-shift of HRS) after `cycles` SET/RESET cycles (window narrowing)."""
        d = np.log10(1.0 + np.maximum(np.asarray(cycles, dtype=float), 0.0) / self.wear_n0)
        return -self.wear_a_lrs * d, self.wear_a_hrs * d

    def tau_ns(self, v_abs: np.ndarray | float, v_th: np.ndarray | float) -> np.ndarray:
        """Switching time constant (ns) at pulse magnitude v_abs for a cell with threshold v_th."""
        return self.tau0_ns * np.exp(-(np.asarray(v_abs, dtype=float) - v_th) / self.v_kin)

    def to_dict(self) -> dict:
        """Plain dict of every parameter (tuples become lists) for ground-truth files."""
        out = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict) -> DeviceParams:
        """Rebuild parameters from `to_dict` output (older files' relaxation law migrated); unknown keys are an error."""
        data = _migrate_relaxation(data)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown DeviceParams field(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, (list, np.ndarray)) else v) for k, v in data.items()}
        return cls(**kwargs)


def _migrate_relaxation(data: dict) -> dict:
    """Parameters written before issue 16 (one relax_t0_s, a polynomial relax_sigma_coeffs_us) as node tables.

    The old law sampled at RELAX_G_NODES_US: t0 the same at every node, sigma_r the polynomial's value there
    (exact at the nodes; between them the log-g interpolation of the new law differs by well under 1 %).
    """
    if "relax_t0_s" not in data and "relax_sigma_coeffs_us" not in data:
        return data
    out = dict(data)
    t0 = float(out.pop("relax_t0_s", 0.02))
    coeffs = np.asarray(out.pop("relax_sigma_coeffs_us", (0.0,)), dtype=float)
    g_max = float(out.get("g_max", DeviceParams.g_max))
    nodes = np.asarray(out.get("relax_g_nodes_us", RELAX_G_NODES_US), dtype=float)
    sigma = np.polynomial.polynomial.polyval(np.clip(nodes * 1e-6 / g_max, 0.0, 1.0), coeffs)
    out["relax_g_nodes_us"] = tuple(float(g) for g in nodes)
    out["relax_t0_nodes_s"] = tuple(t0 for _ in nodes)
    out["relax_sigma_nodes_us"] = tuple(float(max(x, 0.0)) for x in sigma)
    return out
