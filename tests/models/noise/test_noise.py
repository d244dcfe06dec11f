"""Noise families: statistics on 10^6 samples against closed forms, gradients, specs, profile noise."""

import math

import pytest
import torch

from models.mapping import BitSlicedMapping
from models.noise.apply import clean_weights, noisy_forward, noisy_weight_names
from models.noise.factory import noise_from_profile, noise_from_spec
from models.noise.families import (
    AdditiveNoise,
    CensoredNoise,
    DeviceGaussianNoise,
    LogNormalNoise,
    WriteVerifyNoise,
    censored_mean,
    level_factors,
)

torch.set_num_threads(1)
N = 1000  # draws x 1000 weights = 10^6 samples


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def weights_with_max_one(value):
    """1000 weights: one at 1.0 (sets max|W|) and the rest at ``value``."""
    w = torch.full((1000,), float(value), dtype=torch.float64)
    w[0] = 1.0
    return {"w": w}


def test_neft_uniform_gaussian_weight_sigma():
    n = DeviceGaussianNoise(sigma=0.1)  # M=8, K=2: sqrt(1+16+256+4096) = 66.098...
    w = weights_with_max_one(0.3)
    d = (n.sample_batch(w, N, gen())["w"] - w["w"])[:, 1:]
    # full-range convention: each device's sigma is 0.1 of its 3 level steps; rel 0.005 is ~7 SE of a std
    # estimated from 10^6 samples (SE 1/sqrt(2n) = 0.07 %)
    expect = 0.1 * 3 * math.sqrt(1 + 16 + 256 + 4096) / 255
    assert d.std().item() == pytest.approx(expect, rel=0.005)
    assert abs(d.mean().item()) < 4 * expect / math.sqrt(d.numel())
    assert torch.allclose(n.noise_std(w)["w"], torch.full((1000,), expect, dtype=torch.float64))


def test_state_dependent_rram2_by_level():
    assert level_factors("RRAM2", 4) == (1.0, 4.0, 4.0, 1.0)
    assert level_factors("fefet2", 4) == (1.0, 6.0, 6.0, 1.0)
    # the per-level variant (eq. 16 per device, not renormalised), sigma_d in level steps (eq. 15 literally)
    n = noise_from_spec(
        {"family": "state_dependent", "model": "RRAM2", "sigma": 0.1, "state": "level", "convention": "level"}
    )
    w = weights_with_max_one(27 / 255)  # devices (3, 2, 1, 0) -> factors (1, 4, 4, 1)
    d = (n.sample_batch(w, N, gen(1))["w"] - w["w"])[:, 1:]
    expect = 0.1 * math.sqrt(1 * 1 + 16 * 16 + 16 * 256 + 1 * 4096) / 255
    assert d.std().item() == pytest.approx(expect, rel=0.005)  # ~7 SE of a std from 10^6 samples
    # the all-3 weight (1.0) sees only end levels: same as uniform sigma
    assert n.noise_std(w)["w"][0].item() == pytest.approx(0.1 * math.sqrt(4369) / 255)


def test_differential_pair_adds_the_idle_array():
    n = DeviceGaussianNoise(
        0.1, BitSlicedMapping(sign="differential"), factors=level_factors("RRAM2", 4), convention="level"
    )
    w = weights_with_max_one(-27 / 255)
    # negative array holds (3,2,1,0); the positive array is all level 0 (factor 1)
    expect = 0.1 * math.sqrt((1 + 256 + 16 * 256 + 4096) + (1 + 16 + 256 + 4096)) / 255
    assert n.noise_std(w)["w"][1].item() == pytest.approx(expect)
    d = (n.sample_batch(w, N, gen(2))["w"] - w["w"])[:, 1:]
    assert d.std().item() == pytest.approx(expect, rel=0.005)


def test_lognormal_multiplicative():
    s = 0.3
    w = {"w": torch.linspace(-1, 1, 1000, dtype=torch.float64)}
    x = LogNormalNoise(s).sample_batch(w, N, gen(3))["w"]
    ratio = (x / w["w"])[:, w["w"].abs() > 1e-3]
    assert (ratio > 0).all()
    assert torch.log(ratio).std().item() == pytest.approx(s, rel=0.005)
    assert ratio.mean().item() == pytest.approx(math.exp(s * s / 2), rel=0.003)
    sd = LogNormalNoise(s).noise_std(w)["w"][-1].item()
    assert sd == pytest.approx(math.sqrt((math.exp(s * s) - 1) * math.exp(s * s)))


def test_additive_uses_layer_max():
    w = {"w": torch.linspace(-2, 1, 1000, dtype=torch.float64)}
    d = AdditiveNoise(0.05).sample_batch(w, N, gen(4))["w"] - w["w"]
    assert d.std().item() == pytest.approx(0.05 * 2.0, rel=0.005)
    assert abs(d.mean().item()) < 4 * 0.1 / 1000


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_censored_bound_mass_and_mean(lam):
    base = AdditiveNoise(0.1)
    w = {"w": torch.linspace(-1, 1, 1000, dtype=torch.float64)}
    d = CensoredNoise(base, lam).sample_batch(w, N, gen(5))["w"] - w["w"]
    sigma = 0.1
    assert d.max().item() <= lam * sigma + 1e-12
    at_bound = (d >= lam * sigma - 1e-12).double().mean().item()
    assert at_bound == pytest.approx(0.5 * math.erfc(lam / math.sqrt(2)), abs=0.002)
    assert d.mean().item() == pytest.approx(sigma * censored_mean(lam), abs=0.0005)
    assert d.std().item() == pytest.approx(CensoredNoise(base, lam).noise_std(w)["w"][0].item(), rel=0.005)
    r = CensoredNoise(base, lam, recentre=True).sample_batch(w, N, gen(6))["w"] - w["w"]
    assert abs(r.mean().item()) < 0.0005
    assert r.max().item() <= sigma * (lam - censored_mean(lam)) + 1e-12


def test_censored_mean_closed_form():
    z = torch.randn(2_000_000, generator=gen(7), dtype=torch.float64)
    assert torch.clamp(z, max=1.0).mean().item() == pytest.approx(censored_mean(1.0), abs=0.002)


def test_write_verify_bounds_verified_devices_only():
    # one device per weight; sigma_d 0.1 of the full range of 3 level steps = 0.3 level steps
    dev = DeviceGaussianNoise(0.1, BitSlicedMapping(bits=2, bits_per_device=2))
    w = weights_with_max_one(2 / 3)  # level 2; step = 1/3
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[:500] = True
    wv = WriteVerifyNoise(dev, threshold=0.1, mask={"w": mask})
    d = (wv.sample_batch(w, N, gen(8))["w"] - w["w"]) * 3  # back to level units
    assert d[:, :500].abs().max().item() <= 0.1 + 1e-9
    assert d[:, 500:].abs().max().item() > 0.5
    assert d[:, 500:].std().item() == pytest.approx(0.3, rel=0.01)
    for bad in (torch.zeros(999, dtype=torch.bool), torch.zeros(1000, 2, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"write-verify mask for 'w' has shape"):
            WriteVerifyNoise(dev, threshold=0.1, mask={"w": bad}).sample_batch(w, 1, gen(9))
    # truncated normal std: sigma^2 (1 - 2 a phi(a) / (2 Phi(a) - 1)), a = 0.1 / 0.3
    a = 0.1 / 0.3
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    tsd = 0.3 * math.sqrt(1 - 2 * a * phi / math.erf(a / math.sqrt(2)))
    assert d[:, :500].std().item() == pytest.approx(tsd, rel=0.01)
    assert wv.noise_std(w)["w"][1].item() * 3 == pytest.approx(tsd, rel=1e-6)


def test_scaled_and_gradient_to_clean_weights():
    w = torch.randn(20, 10, requires_grad=True)
    for noise in (DeviceGaussianNoise(0.2), AdditiveNoise(0.1), CensoredNoise(AdditiveNoise(0.1), 1.0)):
        s1 = noise.noise_std({"w": w})["w"]
        s2 = noise.scaled(2.5).noise_std({"w": w})["w"]
        assert torch.allclose(s2, 2.5 * s1)
        w.grad = None
        noise.sample({"w": w}, gen(9))["w"].sum().backward()
        assert torch.allclose(w.grad, torch.ones_like(w))  # additive noise: identity Jacobian
    w.grad = None
    g = gen(10)
    noisy = LogNormalNoise(0.2).sample({"w": w}, g)["w"]
    noisy.sum().backward()
    assert torch.allclose(w.grad, noisy.detach() / w.detach())  # d(W e^v)/dW = e^v


def test_noisy_forward_leaves_model_untouched():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3), torch.nn.BatchNorm1d(3)
    )
    assert noisy_weight_names(model) == ["0.weight", "2.weight"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 4, 4)
    model.eval()
    y0 = model(x)
    y1 = noisy_forward(model, x, AdditiveNoise(0.5), gen(11))
    assert not torch.allclose(y0, y1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(clean_weights(model)) == {"0.weight", "2.weight"}


def test_specs_roundtrip_and_errors():
    for spec in (
        {"family": "gaussian", "sigma": 0.2},
        {"family": "lognormal", "sigma": 0.3},
        {"family": "additive", "eta": 0.05},
        {"family": "state_dependent", "model": "FeFET1", "sigma": 0.1},
    ):
        n = noise_from_spec(spec)
        again = noise_from_spec(n.describe())
        w = {"w": torch.randn(8, 8)}
        assert torch.allclose(n.noise_std(w)["w"], again.noise_std(w)["w"])
    c = noise_from_spec({"family": "censored", "sigma": 0.1, "lam": 1.5, "recentre": True})
    assert isinstance(c, CensoredNoise) and isinstance(c.base, DeviceGaussianNoise)
    assert noise_from_spec(None) is None
    with pytest.raises(ValueError, match="unknown noise family"):
        noise_from_spec({"family": "pink"})
    with pytest.raises(ValueError, match="unknown key"):
        noise_from_spec({"family": "additive", "eta": 0.1, "sigmaa": 2})
    with pytest.raises(ValueError, match="state-dependent device model"):
        noise_from_spec({"family": "state_dependent", "model": "PCM9", "sigma": 0.1})


def test_profile_noise_matches_profile_laws():
    from calibration.profile import NoiseProfile

    prof = NoiseProfile.from_paper("ibm_reram", time="1s")  # sigma(g) polynomial of IBM B.2, read 1 %
    noise = noise_from_profile(prof, t_s=0.0, mapping="analog")
    w = weights_with_max_one(0.5)
    d = (noise.sample_batch(w, N, gen(12))["w"] - w["w"])[:, 1:]
    g_pos, g_neg = prof.g_min + 0.5 * (prof.g_max - prof.g_min), prof.g_min
    var_g = sum(float(prof.programming_sigma(g)) ** 2 + float(prof.read_sigma(g)) ** 2 for g in (g_pos, g_neg))
    expect = math.sqrt(var_g) / (prof.g_max - prof.g_min)
    assert d.std().item() == pytest.approx(expect, rel=0.01)
    # relaxation to 1 day adds variance
    later = noise_from_profile(prof, t_s=86400.0, mapping="analog").noise_std(w)["w"][1].item()
    assert later > expect * 1.05


def test_profile_stuck_faults_and_spatial():
    import numpy as np

    from calibration.noise_terms import SpatialModel
    from calibration.profile import NoiseProfile

    prof = NoiseProfile.from_paper("gaussian", sigma=0.0, stuck_lrs=0.02, stuck_hrs=0.03)
    noise = noise_from_profile(prof, mapping="analog")
    w = {"w": torch.zeros(1000, dtype=torch.float64)}  # both devices at g_min
    d = noise.sample_batch(w, N, gen(13))["w"]
    # a weight moves only if a device sticks at LRS: G+ stuck -> +1, G- stuck -> -1 (x max|W| = 1 after guard)
    frac_pos = (d > 0.5).double().mean().item()
    assert frac_pos == pytest.approx(0.02 * 0.98 + 0.0, abs=0.002)
    assert (d.abs() > 1e-9).double().mean().item() == pytest.approx(1 - 0.98**2 + 0.02**2, abs=0.002)
    # spatial: one eigenvector over 2 cells holding half of each device's variance -> correlation 0.5
    prof2 = NoiseProfile.from_paper("gaussian", sigma=0.01)
    v = np.array([[1.0], [1.0]]) / math.sqrt(2)
    var = (0.01 * prof2.g_max) ** 2
    prof2.spatial = SpatialModel(shape=(1, 2), eigvals=np.array([var]), eigvecs=v, n_repeats=1, total_variance=2 * var)
    n2 = noise_from_profile(prof2, mapping="bitsliced", bits=2, read=False)  # one 2-bit device per weight
    w2 = {"w": torch.tensor([1 / 3, 1.0], dtype=torch.float64)}  # devices on cells 0 and 1
    s = n2.sample_batch(w2, 40000, gen(14))["w"] - w2["w"]
    assert torch.corrcoef(s.T)[0, 1].item() == pytest.approx(0.5, abs=0.02)
    sd = n2.noise_std(w2)["w"]
    assert torch.allclose(s.std(0), sd, rtol=0.02)
    dg_level = (prof2.g_max - prof2.g_min) / 3
    assert sd[0].item() == pytest.approx(0.01 * prof2.g_max / dg_level / 3, rel=1e-6)  # step = 1/3


@pytest.mark.parametrize("sign", ["separate", "differential"])
@pytest.mark.parametrize("scale", ["layer", "column"])
def test_profile_code_tables_equal_the_per_device_sum(sign, scale):
    """The 2^M-entry code tables give the same weight mean/std as summing over every device."""
    import numpy as np

    from calibration import synthetic as syn
    from calibration.fit import fit_profile
    from models.noise.profile_noise import ProfileNoise

    rng = np.random.default_rng(3)
    levels = np.linspace(2e-6, 40e-6, 4)
    prof = fit_profile(
        open_loop=syn.programming(rng, levels, 300),
        verified=syn.programming(rng, levels, 300, "additive", eta=0.01, verified=True, mean_pulses=5),
    )
    w = torch.randn(33, 17, generator=gen(5), dtype=torch.float64)
    mask = torch.rand(33, 17, generator=gen(6)) < 0.3
    for opts in ({}, {"all_verified": True}, {"verified_mask": {"w": mask}}):
        noise = ProfileNoise.from_profile(prof, 0.0, sign=sign, scale=scale, stuck=False, spatial=False, **opts).scaled(
            1.7
        )
        fast_mean, fast_std = noise._weight_moments("w", w)
        _, coef, idx, vmask = noise._layout("w", w)
        mean, sig = noise._device_moments(idx, vmask, w)
        slow_mean = (coef * mean).sum(-1).sum(0)
        slow_std = torch.sqrt(((coef * sig) ** 2).sum(-1).sum(0))
        assert slow_mean.abs().max() > 0 and slow_std.min() > 0
        torch.testing.assert_close(fast_mean, slow_mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(fast_std, slow_std, rtol=1e-9, atol=1e-12)
    # a verified weight really uses the tighter law
    masked = ProfileNoise.from_profile(
        prof, sign=sign, scale=scale, stuck=False, spatial=False, verified_mask={"w": mask}
    )
    std = masked.noise_std({"w": w})["w"]
    assert std[mask].mean() < 0.5 * std[~mask].mean()
    bad = ProfileNoise.from_profile(
        prof, sign=sign, scale=scale, stuck=False, spatial=False, verified_mask={"w": mask[:, :5]}
    )
    with pytest.raises(ValueError, match=r"verified mask for 'w' has shape \(33, 5\)"):
        bad.noise_std({"w": w})


def test_magnitude_is_the_family_parameter():
    """NeFT's oriented noises scale the family's own parameter; a profile has none."""
    from calibration.profile import NoiseProfile

    cases = [
        ({"family": "gaussian", "sigma": 0.2}, 0.2),
        ({"family": "lognormal", "sigma": 0.3}, 0.3),
        ({"family": "additive", "eta": 0.05}, 0.05),
        ({"family": "censored", "lam": 1.0, "base": {"family": "gaussian", "sigma": 0.1}}, 0.1),
        ({"family": "write_verify", "threshold": 0.5, "base": {"family": "gaussian", "sigma": 0.15}}, 0.15),
    ]
    for spec, expect in cases:
        noise = noise_from_spec(spec)
        assert noise.magnitude == pytest.approx(expect)
        assert noise.scaled(2.0).magnitude == pytest.approx(2 * expect)
    assert noise_from_profile(NoiseProfile.from_paper("ibm_reram", time="1s")).magnitude is None


def test_profile_noise_draws_the_stuck_fractions_it_is_given():
    """`stuck_fractions` replaces the profile's (a deployment's prediction draws only the unknown defects)."""
    from calibration.profile import NoiseProfile

    prof = NoiseProfile.from_paper("gaussian", sigma=0.0, stuck_lrs=0.02, stuck_hrs=0.03)
    w = {"w": torch.zeros(1000, dtype=torch.float64)}  # both devices at g_min: only an LRS-stuck device moves it
    none = noise_from_profile(prof, mapping="analog", stuck_fractions=(0.0, 0.0)).sample_batch(w, N, gen(13))["w"]
    assert (none.abs() > 1e-9).sum().item() == 0
    more = noise_from_profile(prof, mapping="analog", stuck_fractions=(0.1, 0.0)).sample_batch(w, N, gen(13))["w"]
    # G+ stuck, G- not: p = 0.09 over 10^6 samples, sd 2.9e-4, so 0.002 is 7 sd
    assert (more > 0.5).double().mean().item() == pytest.approx(0.1 * 0.9, abs=0.002)


def test_measured_profiles_count_read_noise_once():
    """A measured profile's programming sigma came from one read per device: the prediction adds no second read
    (issue 16 item 4); a paper family's sigma is programming alone and gets the read noise on top."""
    import numpy as np

    from calibration import synthetic as syn
    from calibration.fit import fit_profile
    from calibration.noise_terms import LevelTable, PolyFit, ReadNoiseModel
    from calibration.profile import NoiseProfile
    from models.noise.profile_noise import ProfileNoise

    rng = np.random.default_rng(4)
    levels = np.linspace(2e-6, 40e-6, 4)
    measured = fit_profile(open_loop=syn.programming(rng, levels, 300))
    read_s = 0.5e-6
    measured.read_noise = ReadNoiseModel(LevelTable(), PolyFit.constant(read_s, measured.g_max))
    assert measured.programming_includes_read
    w = {"w": torch.linspace(-1, 1, 21, dtype=torch.float64)}
    opts = dict(mapping="analog", stuck=False, spatial=False)
    with_read = ProfileNoise.from_profile(measured, **opts)
    g_t = with_read._layout("w", w["w"])[0]  # (2, 21, 1) targets of G+ and G-
    prog = measured.programming_sigma(g_t.numpy())
    k = (with_read.mapping.to_conductances(w["w"]).scale / (measured.g_max - measured.g_min)).numpy()
    # one read: the weight's std is the decode of the measured (read-inclusive) device sigmas, no more
    expect = k * np.sqrt((prog**2).sum(0)[..., 0])
    np.testing.assert_allclose(with_read.noise_std(w)["w"].numpy(), expect, rtol=2e-3)  # 1025-point grid rounding
    chip = ProfileNoise.from_profile(measured, read=False, **opts)  # programming alone: the read deconvolved
    expect_chip = k * np.sqrt((np.clip(prog**2 - read_s**2, 0, None)).sum(0)[..., 0])
    np.testing.assert_allclose(chip.noise_std(w)["w"].numpy(), expect_chip, rtol=2e-3)
    fresh = ProfileNoise.from_profile(measured, programming=False, **opts)  # a fresh read of the chip alone
    np.testing.assert_allclose(fresh.noise_std(w)["w"].numpy(), k * np.sqrt(2) * read_s, rtol=1e-9)
    # chip + fresh read = the one-read total, in variance
    np.testing.assert_allclose(
        chip.noise_std(w)["w"] ** 2 + fresh.noise_std(w)["w"] ** 2, with_read.noise_std(w)["w"] ** 2, rtol=1e-9
    )
    paper = NoiseProfile.from_paper("gaussian", sigma=0.02, read_noise=0.01)
    assert not paper.programming_includes_read
    both = ProfileNoise.from_profile(paper, **opts).noise_std(w)["w"]
    mp = ProfileNoise.from_profile(paper, **opts).mapping
    kp = (mp.to_conductances(w["w"]).scale / (paper.g_max - paper.g_min)).numpy()
    g_max = paper.g_max
    np.testing.assert_allclose(both.numpy(), kp * np.sqrt(2 * ((0.02 * g_max) ** 2 + (0.01 * g_max) ** 2)))
