"""Statistical tests of the simulated 1T1R HfO2 array physics (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from sim_backend.device_model import RRAMArray
from sim_backend.device_params import (
    IBM_RERAM_SIGMA_1DAY_US,
    IBM_RERAM_SIGMA_1S_US,
    DeviceParams,
    ibm_reram_sigma,
)
from sim_backend.ground_truth import load_ground_truth, params_from_ground_truth

P = DeviceParams()
FORM = dict(v_form=3.6, width_ns=1000.0, v_gate=1.0)
FULL_RESET = dict(v=-1.5, width_ns=100.0, v_gate=3.0)


def _cells(n_side: int) -> tuple[np.ndarray, np.ndarray]:
    """All (row, col) indices of an n_side x n_side array."""
    r, c = np.divmod(np.arange(n_side * n_side), n_side)
    return r, c


def _formed_array(n_side: int = 32, seed: int = 1) -> tuple[RRAMArray, np.ndarray, np.ndarray, np.ndarray]:
    """An array whose cells were formed and fully reset; returns (array, rows, cols, healthy mask)."""
    a = RRAMArray(n_side, n_side, seed=seed)
    r, c = _cells(n_side)
    a.form(r, c, **FORM)
    a.reset_pulse(r, c, **FULL_RESET)
    healthy = a.formed & ~a.stuck_lrs & ~a.stuck_hrs
    return a, r, c, healthy


def _binomial_ok(count: int, n: int, p: float, z: float = 4.0) -> bool:
    """Whether count is within z binomial sigmas of n * p."""
    return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p)) + 1


def test_lrs_rises_with_gate_voltage_and_follows_icc_law():
    a, r, c, ok = _formed_array()
    medians = []
    for vg in (0.9, 1.0, 1.1, 1.2):
        a.set_pulse(r, c, 1.5, 100.0, vg)
        g = a.conductance(r, c)[ok]
        medians.append(np.median(g))
        assert np.median(g) == pytest.approx(P.g_lrs(vg), rel=0.05)
        a.reset_pulse(r, c, **FULL_RESET)
    assert np.all(np.diff(medians) > 0)
    # G_LRS proportional to I_cc: 1.2 V vs 0.9 V gate -> (0.6/0.3)^2 = 4x
    assert medians[-1] / medians[0] == pytest.approx(4.0, rel=0.08)


def test_hrs_deepens_with_reset_amplitude():
    a, r, c, ok = _formed_array()
    medians = []
    for v in (1.2, 1.5, 1.8):
        a.set_pulse(r, c, 1.5, 100.0, 1.2)
        a.reset_pulse(r, c, -v, 100.0, 3.0)
        g = a.conductance(r, c)[ok]
        medians.append(np.median(g))
        assert np.median(g) == pytest.approx(P.g_hrs(v), rel=0.1)
    assert medians[0] > medians[1] > medians[2]


def test_one_shot_spreads_are_lognormal_with_documented_sigmas_and_hrs_wider():
    a, r, c, ok = _formed_array(48, seed=2)
    a.set_pulse(r, c, 1.5, 100.0, 1.1)
    ln_lrs = np.log(a.conductance(r, c)[ok])
    a.reset_pulse(r, c, **FULL_RESET)
    ln_hrs = np.log(a.conductance(r, c)[ok])
    s_lrs, s_hrs = ln_lrs.std(), ln_hrs.std()
    assert s_hrs > 2 * s_lrs
    assert s_lrs == pytest.approx(np.hypot(P.lrs_sigma_c2c, P.lrs_sigma_d2d), rel=0.1)
    assert s_hrs == pytest.approx(np.hypot(P.hrs_sigma_c2c, P.hrs_sigma_d2d), rel=0.1)
    assert np.mean(ln_lrs) == pytest.approx(np.log(P.g_lrs(1.1)), abs=0.02)
    # c2c alone: repeat the SET on the same cells; the per-cell difference has variance 2 * c2c^2
    a.set_pulse(r, c, 1.5, 100.0, 1.1)
    a.reset_pulse(r, c, **FULL_RESET)
    a.set_pulse(r, c, 1.5, 100.0, 1.1)
    d = np.log(a.conductance(r, c)[ok]) - ln_lrs
    assert d.std() / np.sqrt(2) == pytest.approx(P.lrs_sigma_c2c, rel=0.12)


def test_pristine_cells_do_not_switch_and_a_fraction_fail_to_form():
    a = RRAMArray(64, 64, seed=3)
    r, c = _cells(64)
    g_pristine = a.conductance(r, c)
    a.set_pulse(r, c, 2.0, 100.0, 1.2)  # a strong SET, but below every forming voltage
    a.reset_pulse(r, c, **FULL_RESET)
    assert np.array_equal(a.conductance(r, c), g_pristine)
    assert not a.formed.any()
    assert np.median(g_pristine) < 0.1 * P.g_min
    a.form(r, c, **FORM)
    flags = a.state_flags(r, c)
    stuck = a.stuck_start_lrs | a.stuck_start_hrs
    not_formed = ~flags["formed"] & ~stuck
    assert _binomial_ok(int(not_formed.sum()), int((~stuck).sum()), P.form_fail_frac)
    assert np.array_equal(not_formed, flags["failed_to_form"] & ~stuck)
    g = a.conductance(r, c)
    assert np.median(g[flags["formed"]]) == pytest.approx(P.g_lrs(1.0), rel=0.05)
    assert np.all(g[not_formed] == g_pristine[not_formed])


def test_forming_needs_the_cells_forming_voltage():
    a = RRAMArray(32, 32, seed=4)
    r, c = _cells(32)
    a.form(r, c, 3.0, 1000.0, 1.0)
    can = a.can_form & ~a.stuck_start_lrs & ~a.stuck_start_hrs
    assert np.array_equal(a.formed[can], a.v_form[can] <= 3.0)
    assert 0.3 < a.formed[can].mean() < 0.7  # 3.0 V is the median forming voltage at 1 us


def test_stuck_at_start_fractions_match_measurement():
    n_side = 128
    a = RRAMArray(n_side, n_side, seed=5)
    r, c = _cells(n_side)
    a.form(r, c, **FORM)
    a.set_pulse(r, c, 1.5, 100.0, 1.2)
    i_lrs = a.read_current(r, c, 0.1)
    a.reset_pulse(r, c, **FULL_RESET)
    i_hrs = a.read_current(r, c, 0.1)
    no_switch = np.abs(i_lrs - i_hrs) < 0.5e-6
    stuck_lrs = no_switch & (i_lrs > 2e-6)
    stuck_low = no_switch & (i_lrs < 1e-6)
    n = n_side * n_side
    assert _binomial_ok(int(stuck_lrs.sum()), n, P.stuck_lrs_frac)
    p_low = P.stuck_hrs_frac + P.form_fail_frac * (1 - P.stuck_lrs_frac - P.stuck_hrs_frac)
    assert _binomial_ok(int(stuck_low.sum()), n, p_low)
    # A stuck cell's two reads differ by read noise and, for a cell with a trap, possibly one RTN step:
    # only cells whose RTN step can reach the 0.5 uA threshold (within 6 noise sigmas) may be missed.
    white = P.read_noise_frac * P.g_max * 0.1
    can_flicker = a.rtn_present & (a.rtn_amp * np.maximum(i_lrs, i_hrs) > 0.5e-6 - 6 * np.sqrt(2) * white)
    assert np.array_equal(stuck_lrs[~can_flicker], a.stuck_start_lrs[~can_flicker])


def test_retention_spread_grows_with_log_time_and_matches_ibm_fit():
    a, r, c, ok = _formed_array(64, seed=6)
    a.set_pulse(r, c, 1.5, 100.0, 1.0)  # one-shot SET to ~20 uS = g_max / 2
    g0 = a.conductance(r, c)
    t_prog = a.time_s
    sigmas, means = [], []
    times = (1.0, 10.0, 100.0, 1e3, 1e4, 86400.0)
    for t in times:
        a.advance(t_prog + t - a.time_s)
        d = (a.conductance(r, c) - g0)[ok]
        sigmas.append(d.std())
        means.append(d.mean())
    assert np.all(np.diff(sigmas) > 0)
    g_mid = np.mean(g0[ok])
    for t, sig, coeffs in ((1.0, sigmas[0], IBM_RERAM_SIGMA_1S_US), (86400.0, sigmas[-1], IBM_RERAM_SIGMA_1DAY_US)):
        ibm = ibm_reram_sigma(g_mid, coeffs)
        assert 0.5 * ibm < sig < 2.0 * ibm, (t, sig, ibm)
    # documented law: variance = sigma_r(g0)^2 * L(t; t0(g0)), mean = mu(g0) * L (zero drift by default)
    expect_sd = [np.sqrt(np.mean(P.relax_variance(g0[ok], t))) for t in times]
    np.testing.assert_allclose(sigmas, expect_sd, rtol=0.08)
    expect_mean = [np.mean(P.relax_mu(g0[ok]) * P.relax_log_time(t, g0[ok])) for t in times]
    np.testing.assert_allclose(means, expect_mean, atol=0.15e-6)


def test_relaxation_path_does_not_depend_on_when_it_is_observed():
    a, r, c, _ = _formed_array(16, seed=7)
    b, *_ = _formed_array(16, seed=7)
    a.set_pulse(r, c, 1.5, 100.0, 1.0)
    b.set_pulse(r, c, 1.5, 100.0, 1.0)
    for dt in (0.1, 1.0, 10.0, 100.0):
        a.advance(dt)
        a.conductance(r, c)
    b.advance(111.1)
    np.testing.assert_allclose(a.conductance(r, c), b.conductance(r, c), rtol=1e-12)


def test_read_noise_white_sigma_and_rtn_variance_follow_documented_law():
    a, r, c, ok = _formed_array(16, seed=8)
    a.set_pulse(r, c, 1.5, 100.0, 1.2)  # LRS (~45 uS) so that RTN steps are well above white noise
    a.advance(1e5)  # far into log-time relaxation: G is constant over the reads below
    white = P.read_noise_frac * P.g_max * 0.1
    reads = []
    for _ in range(300):
        reads.append(a.read_current(r, c, 0.1))
        a.advance(5.0)  # longer than every trap dwell time: independent RTN states
    reads = np.array(reads)
    g = a.conductance(r, c)
    quiet = ok & ~a.rtn_present
    assert reads[:, quiet].std(axis=0).mean() == pytest.approx(white, rel=0.06)
    np.testing.assert_allclose(reads[:, quiet].mean(axis=0), g[quiet] * 0.1, atol=0.3 * white)
    noisy = ok & a.rtn_present
    pi = a.rtn_tau_full / (a.rtn_tau_full + a.rtn_tau_empty)
    expect_var = white**2 + (a.rtn_amp * g * 0.1) ** 2 * pi * (1 - pi)
    assert reads[:, noisy].var(axis=0).sum() == pytest.approx(expect_var[noisy].sum(), rel=0.2)
    assert expect_var[noisy].sum() > 1.5 * white**2 * noisy.sum()


def test_write_verify_ispp_converges_for_healthy_cells():
    a, r, c, ok = _formed_array(32, seed=9)
    r, c = r[ok], c[ok]
    n = r.size
    rng = np.random.default_rng(0)
    target = rng.uniform(P.g_min, P.g_max, n)
    start_lrs = rng.random(n) < 0.5
    a.set_pulse(r[start_lrs], c[start_lrs], 1.5, 100.0, 1.2)
    tol, v_read, step = 0.02 * P.g_max, 0.1, 0.02
    v_set0, v_rst0 = 0.7, 0.6
    v_set, v_rst = np.full(n, v_set0), np.full(n, v_rst0)
    done = np.zeros(n, dtype=bool)
    pulses = np.zeros(n, dtype=int)
    g_at_done = np.full(n, np.nan)
    for _ in range(100):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        g = a.read_current(r[act], c[act], v_read) / v_read
        low, high = g < target[act] - tol, g > target[act] + tol
        fin = act[~low & ~high]
        done[fin] = True
        g_at_done[fin] = a.conductance(r[fin], c[fin])
        s = act[low]
        if s.size:
            a.set_pulse(r[s], c[s], v_set[s], 100.0, 1.3)
            v_set[s] += step
            v_rst[s] = v_rst0
            pulses[s] += 1
        s = act[high]
        if s.size:
            a.reset_pulse(r[s], c[s], -v_rst[s], 100.0, 3.0)
            v_rst[s] += step
            v_set[s] = v_set0
            pulses[s] += 1
    assert done.mean() > 0.95
    assert np.all(pulses[done] < 100)
    # the true conductance at convergence is inside twice the tolerance (read noise 1% g_max)
    assert np.mean(np.abs(g_at_done[done] - target[done]) < 2 * tol) > 0.9
    # both directions were needed and used
    assert np.median(pulses[done]) > 3


def test_cycle_window_closes_and_cells_fail_near_drawn_cycles_to_failure():
    a, r, c, ok = _formed_array(32, seed=10)
    res = a.cycle(r, c, 50_000_000, 25_000, 1.5, 100.0, 1.2, -1.5, 100.0, 3.0, 0.1)
    assert res.lrs_current.shape == (2000, 1024) and res.cycles[-1] == 50_000_000
    # window narrows for cells still alive at a late read
    late = int(np.searchsorted(res.cycles, 2e6))
    alive = ok & (a.cycles_to_failure > 3e6)
    w_early = np.log(np.median(res.lrs_current[0, alive]) / np.median(res.hrs_current[0, alive]))
    w_late = np.log(np.median(res.lrs_current[late, alive]) / np.median(res.hrs_current[late, alive]))
    assert w_late < w_early - 0.5
    # measured failure: first read from which LRS and HRS reads no longer differ
    bad = (res.lrs_current - res.hrs_current) < 0.5e-6
    bad_from_here = np.flip(np.cumprod(np.flip(bad, 0), 0), 0).astype(bool)
    measured = res.cycles[bad_from_here.argmax(axis=0)]
    assert bad_from_here[-1, ok].all()
    drawn = a.cycles_to_failure[ok]
    assert np.median(measured[ok]) == pytest.approx(np.median(drawn), rel=0.2)
    assert np.median(drawn) == pytest.approx(P.weibull_scale * np.log(2) ** (1 / P.weibull_shape), rel=0.15)
    flags = a.state_flags(r, c)
    assert np.all(flags["stuck_lrs"][ok] | flags["stuck_hrs"][ok])
    assert flags["stuck_lrs"][ok].mean() == pytest.approx(P.fail_lrs_frac, abs=0.06)


def test_cycle_statistics_match_explicit_pulse_loop():
    params = DeviceParams(weibull_scale=1e12)
    a = RRAMArray(32, 32, params, seed=11)
    b = RRAMArray(32, 32, params, seed=11)
    r, c = _cells(32)
    for arr in (a, b):
        arr.form(r, c, **FORM)
    ok = a.formed & ~a.stuck_lrs & ~a.stuck_hrs
    lrs, hrs = [], []
    for _ in range(60):  # explicit, partial pulses (1.0 V SET, -1.0 V RESET at 50 ns: f ~ 0.4-0.9)
        a.set_pulse(r, c, 1.0, 50.0, 1.2)
        lrs.append(a.conductance(r, c))
        a.reset_pulse(r, c, -1.0, 50.0, 3.0)
        hrs.append(a.conductance(r, c))
    res = b.cycle(r, c, 60, 1, 1.0, 50.0, 1.2, -1.0, 50.0, 3.0, 0.1)
    for explicit, closed in (
        (np.array(lrs[20:]), res.lrs_current[20:] / 0.1),
        (np.array(hrs[20:]), res.hrs_current[20:] / 0.1),
    ):
        m_e, m_c = np.median(np.log(explicit[:, ok])), np.median(np.log(np.maximum(closed[:, ok], 1e-9)))
        assert m_c == pytest.approx(m_e, abs=0.05)
    assert np.median(b.cycles_used[ok] / a.cycles_used[ok]) == pytest.approx(1.0, abs=0.05)


def test_cycle_bookkeeping_and_virtual_clock():
    a, r, c, _ = _formed_array(8, seed=12)
    t0 = a.time_s
    res = a.cycle(r, c, 10_000, 100, 1.5, 100.0, 1.2, -1.5, 200.0, 3.0, 0.1)
    assert res.set_pulses == res.reset_pulses == 10_000 * 64
    assert res.read_ops == 2 * 100 * 64
    expected = 64 * (10_000 * (300e-9 + 2 * P.pulse_overhead_s) + 200 * P.read_overhead_s)
    assert a.time_s - t0 == pytest.approx(expected, rel=1e-9) and res.elapsed_s == pytest.approx(expected, rel=1e-9)
    np.testing.assert_array_equal(res.cycles, np.arange(100, 10_001, 100))
    t1 = a.time_s
    a.read_current(r, c, 0.1)
    assert a.time_s - t1 == pytest.approx(64 * P.read_overhead_s)
    a.advance(1e5)
    assert a.time_s - t1 == pytest.approx(1e5 + 64 * P.read_overhead_s)


def test_cycle_in_chunks_and_without_reads():
    a, r, c, ok = _formed_array(8, seed=16)
    used0 = a.cycles_used.copy()  # the initial full RESET counted half a cycle
    res = a.cycle(r, c, 500, 501, 1.5, 100.0, 1.2, -1.5, 100.0, 3.0, 0.1)  # read_every > n_cycles: no reads
    assert res.lrs_current.shape == (0, 64) and res.read_ops == 0 and res.cycles.size == 0
    np.testing.assert_allclose(a.cycles_used[ok] - used0[ok], 500.0, rtol=1e-6)
    res2 = a.cycle(r, c, 1000, 500, 1.5, 100.0, 1.2, -1.5, 100.0, 3.0, 0.1)
    np.testing.assert_array_equal(res2.cycles, [500, 1000])
    np.testing.assert_allclose(a.cycles_used[ok] - used0[ok], 1500.0, rtol=1e-6)
    assert np.all(a.conductance(r, c)[ok] < 4 * P.g_hrs(1.5))  # cycles end with a RESET


def test_reproducible_with_same_seed_and_ops():
    def run(seed: int) -> tuple[np.ndarray, ...]:
        a = RRAMArray(16, 16, seed=seed)
        r, c = _cells(16)
        i_form = a.form(r, c, **FORM)
        a.reset_pulse(r, c, -1.3, 100.0, 3.0)
        a.set_pulse(r[:50], c[:50], 0.8, 50.0, 1.1)
        a.advance(100.0)
        reads = a.read_current(r, c, 0.1)
        iv = a.iv_sweep(r[:4], c[:4], np.linspace(0, 1.2, 7), 1000.0, 1.0)
        cyc = a.cycle(r, c, 5000, 500, 1.5, 100.0, 1.2, -1.5, 100.0, 3.0, 0.1)
        return i_form, reads, iv, cyc.lrs_current, cyc.hrs_current, a.conductance(r, c)

    first, second, other = run(42), run(42), run(43)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[1], other[1])


def test_iv_sweep_shows_set_and_reset_with_compliance():
    a, r, c, ok = _formed_array(8, seed=13)
    r, c = r[ok][:16], c[ok][:16]
    up = np.linspace(0, 1.2, 25)
    down = np.linspace(0, -1.8, 37)
    i_up = a.iv_sweep(r, c, up, 10_000.0, 1.0)
    assert np.all(np.abs(i_up) <= P.i_cc(1.0) + 1e-15)
    assert np.all(i_up[-1] == pytest.approx(P.i_cc(1.0)))  # SET reached compliance
    g_lrs = a.conductance(r, c)
    i_dn = a.iv_sweep(r, c, down, 10_000.0, 3.0)
    assert np.all(i_dn[1:] < 0)
    assert np.all(a.conductance(r, c) < 0.2 * g_lrs)  # RESET happened


def test_pulse_currents_are_compliance_limited():
    a, r, c, ok = _formed_array(8, seed=14)
    i = a.set_pulse(r[ok], c[ok], 1.5, 100.0, 0.9)
    np.testing.assert_allclose(i, P.i_cc(0.9))
    g_before = a.conductance(r[ok], c[ok])
    i_r = a.reset_pulse(r[ok], c[ok], -1.5, 100.0, 3.0)
    assert np.all(i_r < 0)
    # RESET current is the peak at the start of the pulse: the LRS current at 1.5 V (sinh law)
    y, y_ref = 1.5 / P.v_nl, P.v_read_ref / P.v_nl
    expected = g_before * 1.5 * (np.sinh(y) / y) / (np.sinh(y_ref) / y_ref)
    np.testing.assert_allclose(-i_r, np.minimum(expected, P.i_cc(3.0)), rtol=0.03)  # ~1 ms of relaxation


def test_ground_truth_roundtrip(tmp_path):
    a, r, c, _ = _formed_array(8, seed=15)
    path = tmp_path / "gt.h5"
    a.write_ground_truth(path)
    gt = load_ground_truth(path)
    live = a.ground_truth()
    assert params_from_ground_truth(gt) == a.params
    assert gt["rows"] == 8 and gt["seed"] == 15
    for k, v in live["cells"].items():
        np.testing.assert_array_equal(gt["cells"][k], v)
    assert gt["cells"]["cycles_to_failure"].shape == (8, 8)
    assert gt["derived"]["hrs_ln_sigma_total"] == pytest.approx(np.hypot(P.hrs_sigma_c2c, P.hrs_sigma_d2d))
    assert "relaxation" in gt["laws"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a: a.reset_pulse([0], [0], 1.0, 100.0, 3.0), "negative"),
        (lambda a: a.set_pulse([0], [0], -1.0, 100.0, 1.0), ">= 0"),
        (lambda a: a.set_pulse([0, 0], [1, 1], 1.0, 100.0, 1.0), "once per call"),
        (lambda a: a.read_current([4], [0], 0.1), "out of range"),
        (lambda a: a.read_current([0, 1], [0, 1, 2], 0.1), "equal length"),
        (lambda a: a.set_pulse([0], [0], 1.0, 0.0, 1.0), "width_ns"),
        (lambda a: a.advance(-1.0), "non-negative"),
        (lambda a: a.cycle([0], [0], 0, 1, 1.5, 100, 1.2, -1.5, 100, 3.0, 0.1), "n_cycles"),
        (lambda a: a.read_current([0], [0], float("nan")), "finite"),
        # the single-cell fast paths (one-element int arrays, Python scalars) refuse what the general ones do
        (lambda a: a.read_current(np.array([4]), np.array([0]), 0.1), "rows index out of range"),
        (lambda a: a.read_current(np.array([0]), np.array([-1]), 0.1), "cols index out of range"),
        (lambda a: a.set_pulse(np.array([0]), np.array([0]), float("inf"), 100.0, 1.0), "voltage must be finite"),
        (lambda a: a.set_pulse(np.array([0]), np.array([0]), 1.0, 100, float("nan")), "v_gate must be finite"),
        (lambda a: a.form(np.array([0], dtype=np.uint8), np.array([9]), 3.0, 1000, 1.0), "cols index out of range"),
    ],
)
def test_bad_input_gives_clear_errors(call, message):
    a = RRAMArray(4, 4, seed=0)
    with pytest.raises(ValueError, match=message):
        call(a)


def test_params_validation():
    with pytest.raises(ValueError, match="g_min"):
        DeviceParams(g_min=50e-6)
    with pytest.raises(ValueError, match="form_fail_frac"):
        DeviceParams(form_fail_frac=1.5)
    with pytest.raises(ValueError, match="unknown DeviceParams"):
        DeviceParams.from_dict({"bogus": 1})


def test_single_cell_fast_paths_give_the_general_paths_numbers(monkeypatch):
    """Indices, scalar operands and I-V shapes of one cell take shortcuts (no numpy per-call overhead, cached
    shapes): the same states and currents, bit for bit, as the general paths on the same calls."""
    import sim_backend.device_model as dm

    def run() -> tuple[np.ndarray, ...]:
        a = RRAMArray(4, 4, seed=3)
        out = []
        for k in range(12):  # a forming ramp on one cell, reads between, then SET/RESET at varied voltages
            r, c = np.array([1]), np.array([2])
            out.append(a.form(r, c, 2.0 + 0.1 * k, 1000, 1.0))
            out.append(a.read_current(r, c, 0.1))
        for v in (1.1, -1.2, 1.3, -1.6):
            pulse = a.set_pulse if v > 0 else a.reset_pulse
            out.append(pulse(np.array([1]), np.array([2]), v, 200.0, 1.2))
            out.append(a.read_current(np.array([1]), np.array([2]), 0.2))
        return (*out, a.conductance([1], [2]), a.cycles_used.copy(), np.array([a.clock_ns]))

    fast = run()
    general_as_index = dm._as_index

    def general_index(name, value, size):  # a list takes the general path
        return general_as_index(name, list(np.atleast_1d(value)), size)

    def general_broadcast(name, value, n, _orig=dm._broadcast):
        return _orig(name, np.asarray(value, dtype=float), n)  # an array operand takes the general path

    def general_iv(self, g, v):
        return g * v * self._iv_shape(v) / self._iv_shape(np.asarray(self.params.v_read_ref))

    monkeypatch.setattr(dm, "_as_index", general_index)
    monkeypatch.setattr(dm, "_broadcast", general_broadcast)
    monkeypatch.setattr(dm.RRAMArray, "_iv", general_iv)
    general = run()
    assert len(fast) == len(general)
    for x, y in zip(fast, general, strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_iv_shape_cache_stays_bounded(monkeypatch):
    import sim_backend.device_model as dm

    monkeypatch.setattr(dm, "_IV_CACHE_MAX", 3)
    a = RRAMArray(2, 2, seed=0)
    currents = [a._iv(np.array([10e-6]), np.array([v])) for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert len(a._iv_at) == 3  # the first three voltages kept, the others computed each time
    for v, i in zip((0.1, 0.2, 0.3, 0.4, 0.5), currents, strict=True):
        np.testing.assert_array_equal(
            i, 10e-6 * v * a._iv_shape(np.array([v])) / a._iv_shape(np.asarray(a.params.v_read_ref))
        )
