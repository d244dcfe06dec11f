"""Recovery: characterize a simulated chip with the real host procedures, fit it, and find its ground truth.

One 32x32 chip (seed 11, default DeviceParams) is formed directly on the simulator (set-up, not under
test), then measured through the board client exactly as a user would: `levels` (open-loop and
write-verify to 8 levels, reads at 1-1000 s), `read-noise` (100 block reads, no reprogramming, on
cells last programmed >= 1000 s earlier), a short `endurance` run for the LRS/HRS spreads and a long
one (2e7 cycles) for the lifetime. Every fitted parameter is compared with what the simulator's laws
and parameters imply (sim_backend/device_params.py), in the board's measured units: the board's read
chain has a true gain error k (its nominal calibration is used), so conductances read k*G.
Tolerances are 3 reported standard errors unless a test's docstring states and justifies another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from calibration.datasets import ProgrammingDataset
from calibration.families import fit_families
from calibration.fit import FitOptions
from calibration.fit_read import detect_rtn
from calibration.profile import NoiseProfile
from calibration.weibull import fit_weibull_censored
from hil.characterize import get_procedure
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import read_run
from hil.hardware.board import Board
from hil.pipeline.run_datasets import Datasets, fit_runs
from sim_backend.device_params import DeviceParams

SEED, ROWS, COLS = 11, 32, 32
N = ROWS * COLS
CELLS = f"0:{ROWS},0:{COLS}"
P = DeviceParams()
# write-verify once (reverify=0): the bounds below are the once-verified law's, and touch-ups would wear the
# cells before the endurance run whose lifetimes they recover
LEVELS = dict(levels=8, g_lo=4e-6, g_hi=36e-6, tol=0.8e-6, read_times="1,10,100,1000", reverify=0)
SPREAD_RUN = dict(cycles=200, read_every=2, set_gate=1.1, reset_v=-1.3)  # HRS ~4.5 uS: 11x the read noise
LIFE_RUN = dict(cycles=20_000_000, read_every=10_000)  # 4x the Weibull scale: > 99 % of the cells wear out
S_LRS = math.hypot(P.lrs_sigma_c2c, P.lrs_sigma_d2d)  # total ln-sigma of a full SET (c2c and d2d)
SIGMA_READ = P.read_noise_frac * P.g_max


@dataclass
class Chip:
    """The runs, the fitted profiles and the simulator's ground truth of the one chip under test."""

    runs: dict[str, Path]
    profile: NoiseProfile  # levels + read-noise + short endurance
    datasets: Datasets
    life: NoiseProfile  # long endurance run only
    k: float  # true gain of the board's read chain: measured conductance = k * G
    truth: dict[str, np.ndarray]  # per-cell ground truth (row-major, whole chip)
    verify_pulses: int  # pulses the board applied during write-verify (its own counters)


def _run(board: Board, name: str, out: Path, **params: object) -> Path:
    cls = get_procedure(name)
    run_procedure(cls(cls.Params(cells=CELLS, **params), board), out, quiet=True)
    return out


@pytest.fixture(scope="module")
def chip(tmp_path_factory: pytest.TempPathFactory) -> Chip:
    d = tmp_path_factory.mktemp("recovery")
    with Board.open(f"sim://?seed={SEED}&rows={ROWS}&cols={COLS}") as board:
        eng = board.link.engine  # type: ignore[attr-defined]
        a = eng.array
        a.form(*a.all_cells(), 4.0, 1000, 1.0)  # set-up: every formable cell formed, not under test
        c0 = eng.counters.set + eng.counters.reset
        runs = {"levels": _run(board, "levels", d / "levels.h5", **LEVELS)}
        spent = eng.counters.set + eng.counters.reset - c0
        gate_cal = read_run(runs["levels"]).params
        verify_pulses = (
            spent
            - 2 * gate_cal["gate_points"] * min(gate_cal["cal_cells"], N)
            - int(read_run(runs["levels"]).data["open_loop"]["pulses"].sum())
        )
        runs["read-noise"] = _run(board, "read-noise", d / "read_noise.h5", reads=100, program=False)
        runs["spreads"] = _run(board, "endurance", d / "spreads.h5", **SPREAD_RUN)
        runs["life"] = _run(board, "endurance", d / "life.h5", **LIFE_RUN)
        truth = {
            k: np.asarray(getattr(a, k)).copy()
            for k in (
                "stuck_start_lrs",
                "stuck_start_hrs",
                "can_form",
                "cycles_to_failure",
                "fail_mode_lrs",
                "rtn_present",
                "rtn_amp",
                "rtn_tau_empty",
                "rtn_tau_full",
                "lrs_d2d",
                "hrs_d2d",
            )
        }
        k = float(eng.chain.read.true_gain)
    profile, datasets = fit_runs([runs["levels"], runs["read-noise"], runs["spreads"]])
    life, _ = fit_runs([runs["life"]], g_min=P.g_min, g_max=P.g_max)
    return Chip(runs, profile, datasets, life, k, truth, int(verify_pulses))


def _lognormal_expect(f: Callable[[np.ndarray], np.ndarray], median: np.ndarray, s: float) -> np.ndarray:
    """E[f(G)] for G = median * exp(N(0, s^2)), per median (Gauss-Hermite, 24 nodes)."""
    x, w = np.polynomial.hermite_e.hermegauss(24)
    g = np.multiply.outer(np.asarray(median, dtype=float), np.exp(s * x))
    return (f(g) @ w) / w.sum()


def _levels(chip: Chip) -> tuple[np.ndarray, np.ndarray]:
    """Target levels and the open-loop level means (S, measured units) of the levels run."""
    t = chip.profile.open_loop.table
    return t.levels_g, t.levels_g + t.mean


# ------------------------------------------------------------------------------------------- read noise
def test_read_sigma_recovers_the_white_read_noise(chip: Chip) -> None:
    """Per conductance group (64 cells x 99 dof each) the fitted read sigma is k*read_noise_frac*g_max.

    Telegraph cells the detector misses add their (small) variance, so the fit may only lie above the
    truth: allowed up to 10 % (>= 6,000 dof per group), and never below it by more than 3 SE.
    """
    rn = chip.profile.read_noise
    truth = chip.k * SIGMA_READ
    t = rn.table
    assert t.levels_g.size == 16 and np.all(t.count * 99 >= 1000)
    assert np.all(t.sigma >= truth - 3 * t.sigma_se), t.sigma
    assert np.all(t.sigma <= 1.10 * truth), t.sigma
    pooled = math.sqrt(float(np.sum(t.sigma**2 * t.count) / t.count.sum()))
    assert pooled == pytest.approx(truth, rel=0.05)
    mid = np.array([0.5 * (chip.profile.g_min + chip.profile.g_max)])
    assert chip.profile.read_sigma(mid)[0] == pytest.approx(truth, rel=0.10)


def test_rtn_detector_flags_real_telegraph_cells(chip: Chip) -> None:
    """The bimodal cells the fit reports are the chip's telegraph cells, and the strong ones are found.

    The device gives 20 % of cells a trap of median amplitude 3 %: at these levels that is mostly below
    the 0.4 uS read noise, so only ~1.5 % of cells are detectable. "Strong" cells (RTN step >= 4 read
    sigmas, both states >= 20 % occupied) must all be found; at least 80 % of the flagged cells must
    carry a trap, and false alarms on trap-free cells must stay below 1 % (the fitter aims at 1e-3).
    """
    g = read_run(chip.runs["read-noise"]).data["reads"]["g"].T  # (cells, reads)
    opt = FitOptions()
    det = detect_rtn(g, opt.rtn_separation, opt.rtn_min_state_fraction, opt.rtn_false_alarm)
    rtn = chip.profile.read_noise.rtn
    assert rtn.n_cells == N and rtn.fraction_bimodal == pytest.approx(det.bimodal.mean())
    tr = chip.truth
    present = tr["rtn_present"]
    assert rtn.fraction_bimodal <= P.rtn_cell_frac
    assert det.bimodal[~present].mean() <= 0.01
    assert present[det.bimodal].mean() >= 0.8
    pi = tr["rtn_tau_full"] / (tr["rtn_tau_full"] + tr["rtn_tau_empty"])
    step = tr["rtn_amp"] * g.mean(axis=1) / (chip.k * SIGMA_READ)
    strong = present & (step >= 4) & (np.minimum(pi, 1 - pi) >= 0.2)
    assert strong.any()  # the chip has strong telegraph cells, so the next line is not vacuous
    assert det.bimodal[strong].all()


# ------------------------------------------------------------------------------------------- programming
def _open_loop_sigma_law(chip: Chip) -> np.ndarray:
    """Open-loop sigma (measured S) per level at the first read, from the device laws.

    One RESET then one full SET: G0 = M exp(N(0, s^2)) with s the total LRS ln-sigma and M the level's
    median (set by the gate calibration; taken from the measured level mean). By the first read (t1
    after programming) relaxation adds sigma_r(G0)^2 L(t1; t0(G0)) and mu(G0) L(t1; t0(G0)); the read adds
    white noise. Telegraph noise adds < 0.5 % of the variance and is left out.
    """
    ol = chip.profile.open_loop
    t1 = ol.t_read_s
    _, mean_meas = _levels(chip)

    def drift(g: np.ndarray) -> np.ndarray:
        return P.relax_mu(g) * P.relax_log_time(t1, g)

    m = (mean_meas / chip.k - drift(mean_meas / chip.k)) / math.exp(0.5 * S_LRS**2)
    var_g0 = m**2 * math.exp(S_LRS**2) * math.expm1(S_LRS**2)
    var_relax = _lognormal_expect(lambda g: P.relax_variance(g, t1), m, S_LRS)
    var_drift = _lognormal_expect(lambda g: drift(g) ** 2, m, S_LRS) - _lognormal_expect(drift, m, S_LRS) ** 2
    return chip.k * np.sqrt(var_g0 + var_relax + var_drift + SIGMA_READ**2)


def test_open_loop_sigma_follows_the_lrs_law_plus_relaxation(chip: Chip) -> None:
    """Per level (~125 cells) within 3 SE; pooled over the 8 levels (> 1,000 cells) within 5 %."""
    t = chip.profile.open_loop.table
    expect = _open_loop_sigma_law(chip)
    assert np.all(np.abs(t.sigma - expect) <= 3 * t.sigma_se), (t.sigma, expect)
    w = 1 / (t.sigma_se / expect) ** 2
    ratio = float(np.sum(w * t.sigma / expect) / w.sum())
    assert t.count.sum() >= 1000 and ratio == pytest.approx(1.0, abs=0.05)
    # the profile's polynomial carries the same numbers
    assert np.allclose(chip.profile.programming_sigma(t.levels_g), t.sigma, rtol=0.12)
    assert chip.profile.pulses_per_device(verified=False) == 2.0  # one RESET + one SET per cell


def test_write_verify_sigma_and_pulses(chip: Chip) -> None:
    """Write-verify: converged within tol, then relaxation up to the first read (~1 s) and read noise.

    Bracket per level (looser, by design): at least the read noise plus the relaxation of the cells
    write-verify pulsed (the others keep relaxing on an older, slower clock), at most that plus the
    whole tolerance window and two read-noise draws, with 15 % (3 SE of ~125 cells) slack each way.
    Pulses per device equal what the board's own counters saw, per converged cell.
    """
    v = chip.profile.verified
    data = read_run(chip.runs["levels"]).data["verified"]
    ok = data["status"] == 0
    lo, hi = [], []
    for lvl in v.table.levels_g:
        cells = ok & np.isclose(data["target"], lvl)
        fresh = float(np.mean(data["pulses"][cells] > 0))
        relax = fresh * float(P.relax_variance(lvl / chip.k, v.t_read_s))
        lo.append(math.sqrt(SIGMA_READ**2 + relax))
        hi.append(math.sqrt(LEVELS["tol"] ** 2 + 2 * SIGMA_READ**2 + relax))
    lo_a, hi_a = chip.k * np.array(lo), chip.k * np.array(hi)
    assert np.all(v.table.sigma >= 0.85 * lo_a) and np.all(v.table.sigma <= 1.15 * hi_a), (v.table.sigma, lo_a, hi_a)
    assert np.all(v.table.sigma < chip.profile.open_loop.table.sigma)  # verify beats one shot at every level
    assert v.pulses_mean * ok.sum() == pytest.approx(chip.verify_pulses)
    assert chip.profile.pulses_per_device(verified=True) == pytest.approx(chip.verify_pulses / ok.sum())


def test_families_by_aic(chip: Chip) -> None:
    """At the 1 s read the relaxation (sigma_r ~ 1-1.6 uS/sqrt(decade), not proportional to G) and the read
    noise sit on top of the log-normal LRS law, so the relative spread falls from ~35 % at 4 uS to ~14 %
    at 36 uS: one log-normal s cannot fit, and the per-level (state-dependent) family wins by AIC.

    Right after programming (the open-loop read ~1 ms after the SET) the LRS law dominates: log-normal
    beats additive by far, is the best family by BIC, and its s is the LRS ln-sigma with the read noise
    added (level-averaged (sigma_read/G)^2), within 5 %.
    """
    fam = chip.profile.families
    assert chip.profile.best_family() == "state_dependent"
    rel = _open_loop_sigma_law(chip) / _levels(chip)[0]
    assert rel[0] > 2 * rel[-1]
    sd = fam["state_dependent"]
    assert np.allclose(
        sd.level_sigma_frac * chip.profile.g_max, chip.profile.open_loop.table.sigma, rtol=0.1, atol=0.2e-6
    )
    assert rel.min() < fam["lognormal"].params["s"] < rel.max()
    d = read_run(chip.runs["levels"]).data
    ok = d["verified"]["status"] == 0
    ol = d["open_loop"][ok]
    now = fit_families(ProgrammingDataset(ol["target"], ol["g"], verified=False, t_read_s=1e-3), chip.profile.g_max)
    assert now["lognormal"].aic < now["additive"].aic - 100
    assert min(now.values(), key=lambda f: f.bic).family == "lognormal"
    levels = _levels(chip)[0]
    # Each level's median sits off its target by the 16-cell gate calibration's error; one log-normal s over
    # all levels also absorbs the spread of those per-level offsets (measured: the spread of the per-level
    # mean ln(g / target) around their mean).
    ln_err = np.log(ol["g"] / ol["target"])
    offsets = np.array([ln_err[np.isclose(ol["target"], lv)].mean() for lv in np.unique(ol["target"])])
    s_expect = math.sqrt(S_LRS**2 + float(np.mean((chip.k * SIGMA_READ / levels) ** 2)) + float(offsets.var()))
    # the fitted s is a standard deviation of n samples: its standard error is s / sqrt(2 n); allow 3 of them
    assert now["lognormal"].params["s"] == pytest.approx(s_expect, rel=3 / math.sqrt(2 * ol.size))


# ------------------------------------------------------------------------------------------- relaxation
def test_relaxation_variance_growth_and_drift(chip: Chip) -> None:
    """From the open-loop reads at 1-1000 s: the variance grows by sigma_r(g)^2 per decade and the mean by mu(g).

    The fitter's clock is L_fit = log10(t/t_first) with t_first the first read (~1 s), the device's
    L = log10(1 + t/t0(g)) with t0 from ~1 ms (4-8 uS) to ~0.25 s (36 uS); so the fitted s1sq is compared
    with the device's variance increase from the first to the last read per decade of t_last/t_first,
    sigma_r^2 (L(t_last) - L(t_first)) / log10(t_last/t_first), averaged over the level's
    G0 = M exp(N(0, s^2)) (the device's L is slightly concave in log t at the high levels: its increase
    per decade falls by < 3 % over the run). Per level within 3 reported SE; SE-weighted over all levels
    within 3 SE of the pooled estimate. Drift per level within 3 SE.
    """
    rm = chip.profile.relaxation_model
    assert chip.datasets.used["relaxation"] == [str(chip.runs["levels"])]
    _, mean_meas = _levels(chip)
    t1, t2 = rm.t0_s, rm.t_max_s
    g1 = mean_meas / chip.k
    m = (g1 - P.relax_mu(g1) * P.relax_log_time(t1, g1)) / math.exp(0.5 * S_LRS**2)

    def per_decade(g: np.ndarray) -> np.ndarray:
        return (P.relax_variance(g, t2) - P.relax_variance(g, t1)) / math.log10(t2 / t1)

    def mu_per_decade(g: np.ndarray) -> np.ndarray:
        return P.relax_mu(g) * (P.relax_log_time(t2, g) - P.relax_log_time(t1, g)) / math.log10(t2 / t1)

    s2 = chip.k**2 * _lognormal_expect(per_decade, m, S_LRS)
    mu = chip.k * _lognormal_expect(mu_per_decade, m, S_LRS)
    assert np.allclose(rm.levels_g, _levels(chip)[0])
    assert np.all(np.abs(rm.s1sq - s2) <= 3 * rm.s1sq_se), (rm.s1sq, s2, rm.s1sq_se)
    w = 1 / (rm.s1sq_se / s2) ** 2
    ratio = float(np.sum(w * rm.s1sq / s2) / w.sum())
    assert abs(ratio - 1) <= 3 / math.sqrt(w.sum())
    assert np.all(np.abs(rm.b - mu) <= 3 * rm.b_se), (rm.b, mu, rm.b_se)
    # through the profile API: extra variance between 10 s and 1000 s at the level conductances
    g = rm.levels_g
    dv = chip.profile.relaxation(g, 1000.0)[1] ** 2 - chip.profile.relaxation(g, 10.0)[1] ** 2
    device = chip.k**2 * _lognormal_expect(lambda g: P.relax_variance(g, 1000.0) - P.relax_variance(g, 10.0), m, S_LRS)
    assert float(np.sum(dv)) == pytest.approx(float(np.sum(device)), rel=0.25)


# ------------------------------------------------------------------------------------------- endurance
def test_endurance_lrs_hrs_medians_and_spreads(chip: Chip) -> None:
    """200 cycles read every 2 (wear < 0.03 in ln G, negligible): medians and ln-sigmas of LRS and HRS.

    Medians within 3 %. d2d sigmas within 3 SE of the parameters (1,000 cells). The c2c sigmas hold
    100 reads x 1,000 cells, so the read noise matters: the expected c2c is sqrt(c2c^2 +
    E[(sigma_read/G)^2]) over the state's log-normal distribution (+0.2 % at LRS, +4 % at HRS), and
    the fit must match it within 10 %.
    """
    e = chip.profile.endurance
    healthy = ~(chip.truth["stuck_start_lrs"] | chip.truth["stuck_start_hrs"] | ~chip.truth["can_form"])
    lrs_med = chip.k * float(P.g_lrs(SPREAD_RUN["set_gate"]))
    hrs_med = chip.k * float(P.g_hrs(SPREAD_RUN["reset_v"]))
    assert e.lrs_median == pytest.approx(lrs_med, rel=0.03)
    assert e.hrs_median == pytest.approx(hrs_med, rel=0.03)
    se = e.sigma_se
    assert abs(e.lrs_sigma_d2d - P.lrs_sigma_d2d) <= 3 * se[1]
    assert abs(e.hrs_sigma_d2d - P.hrs_sigma_d2d) <= 3 * se[3]
    tot_l, tot_h = S_LRS, math.hypot(P.hrs_sigma_c2c, P.hrs_sigma_d2d)
    noise_l = float(_lognormal_expect(lambda g: (SIGMA_READ / g) ** 2, np.array([lrs_med / chip.k]), tot_l)[0])
    noise_h = float(_lognormal_expect(lambda g: (SIGMA_READ / g) ** 2, np.array([hrs_med / chip.k]), tot_h)[0])
    assert e.lrs_sigma_c2c == pytest.approx(math.sqrt(P.lrs_sigma_c2c**2 + noise_l), rel=0.10)
    assert e.hrs_sigma_c2c == pytest.approx(math.sqrt(P.hrs_sigma_c2c**2 + noise_h), rel=0.10)
    assert e.n_cells == N and e.n_failed == 0 and e.n_censored == int(healthy.sum())
    assert math.isnan(e.weibull_shape)  # no wear-out in 200 cycles: no lifetime fitted


def test_weibull_lifetime_recovers_the_device_law(chip: Chip) -> None:
    """2e7 cycles read every 1e4 on 1,024 cells: Weibull shape and scale within 3 SE of the parameters.

    Against the chip's own draws of cycles-to-failure (the realized sample), the fit differs only by
    the read grid (a failure is seen at the next read): within 1 SE.
    """
    e = chip.life.endurance
    assert abs(e.weibull_shape - P.weibull_shape) <= 3 * e.weibull_shape_se
    assert abs(e.weibull_scale - P.weibull_scale) <= 3 * e.weibull_scale_se
    tr = chip.truth
    healthy = ~(tr["stuck_start_lrs"] | tr["stuck_start_hrs"] | ~tr["can_form"])
    ctf = tr["cycles_to_failure"][healthy]
    sample = fit_weibull_censored(np.minimum(ctf, LIFE_RUN["cycles"]), ctf < LIFE_RUN["cycles"])
    assert abs(e.weibull_shape - sample.shape) <= e.weibull_shape_se
    assert abs(e.weibull_scale - sample.scale) <= e.weibull_scale_se
    assert e.n_failed == pytest.approx(int((ctf < LIFE_RUN["cycles"]).sum()), abs=3)


def test_stuck_fractions_are_the_chips_defects(chip: Chip) -> None:
    """Cells write-verify could not program are the chip's shorted (stuck high) and open or unformable
    (stuck low) cells, exactly; their rates are those of the parameters within 3 binomial SE.
    The long endurance run counts the same cells (plus any that wore out before its first read)."""
    tr = chip.truth
    high = int(tr["stuck_start_lrs"].sum())
    low = int((tr["stuck_start_hrs"] | (~tr["can_form"] & ~tr["stuck_start_lrs"])).sum())
    assert chip.profile.stuck_fractions == (high / N, low / N)
    p_low = P.stuck_hrs_frac + P.form_fail_frac * (1 - P.stuck_lrs_frac - P.stuck_hrs_frac)
    for frac, p in ((high / N, P.stuck_lrs_frac), (low / N, p_low)):
        assert abs(frac - p) <= 3 * math.sqrt(p * (1 - p) / N)
    healthy = ~(tr["stuck_start_lrs"] | tr["stuck_start_hrs"] | ~tr["can_form"])
    early = healthy & (tr["cycles_to_failure"] <= LIFE_RUN["read_every"])
    e = chip.life.endurance
    assert round(e.stuck_lrs_fraction * N) == high + int((early & tr["fail_mode_lrs"]).sum())
    assert round(e.stuck_hrs_fraction * N) == low + int((early & ~tr["fail_mode_lrs"]).sum())
