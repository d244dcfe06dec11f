"""The prebuilt per-device Monte Carlo sampler draws what the reference per-device code draws (`ProfileNoise._delta`).

Different random streams, same law: each weight's marginal (two-sample KS), the correlation between weights
(the spatial field), and the standard deviation `noise_std` predicts; and results independent of chunking.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import models.noise.device_sampler as device_sampler
from calibration.noise_terms import SpatialModel
from calibration.profile import NoiseProfile
from models.montecarlo import draw_generator
from models.noise.device_sampler import DeviceSampler, stuck_positions
from models.noise.factory import noise_from_profile
from tests.helpers.threads import torch_threads

torch.set_num_threads(1)

N = 5000  # draws per sampler
# Every test below makes at most ~40 KS comparisons of two samples of the same law; a per-test threshold of
# 1e-5 keeps the chance that any of them fails by sampling alone below 40 * 1e-5 = 4e-4 (Bonferroni).
KS_P_MIN = 1e-5
SIGMA = 0.05  # device sigma, fraction of g_max
# cell correlation of the spatial part, positive definite
R4 = np.array([[1.0, 0.5, 0.2, 0.6], [0.5, 1.0, 0.5, 0.2], [0.2, 0.5, 1.0, 0.5], [0.6, 0.2, 0.5, 1.0]])
R3 = R4[:3, :3]


def _profile(family: str, cells: int, stuck: tuple[float, float] = (0.05, 0.08), **extra) -> NoiseProfile:
    params = {"sigma": SIGMA} if family == "gaussian" else {"s": 0.1}
    prof = NoiseProfile.from_paper(family, stuck_lrs=stuck[0], stuck_hrs=stuck[1], **params, **extra)
    s2 = (SIGMA * prof.g_max) ** 2
    R = R4 if cells == 4 else R3
    vals, vecs = np.linalg.eigh(0.5 * s2 * R)
    shape = (2, 2) if cells == 4 else (3, 1)
    prof.spatial = SpatialModel(shape=shape, eigvals=vals, eigvecs=vecs, n_repeats=1, total_variance=0.5 * s2 * cells)
    return prof


W = {"w": torch.tensor([0.9, -0.4, 0.1, 0.7, -1.0, 0.3, 0.55, -0.05], dtype=torch.float64)}


def _samples(noise, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """(reference draws, new sampler draws), each (n, weights)."""
    ref = noise.sample_batch(W, n, torch.Generator().manual_seed(11))["w"].numpy()
    new = noise.draw_sampler(W)([draw_generator(3, i, "cpu") for i in range(n)])["w"].numpy().copy()
    return ref, new


def _corr_tolerance(rho: float, n: int) -> float:
    """4 standard errors of the difference of two independent sample correlations ((1 - rho^2) / sqrt(n) each)."""
    return 4 * math.sqrt(2) * (1 - rho**2) / math.sqrt(n) + 1e-9


CASES = [
    # (family, spatial cells, sign, mapping bits): blocks path (4 cells, 2 devices/weight) and straddling field path
    ("gaussian", 4, "separate", 4),
    ("gaussian", 3, "separate", 4),
    ("gaussian", 4, "differential", 4),
    ("lognormal", 4, "separate", 4),
    ("lognormal", 3, "differential", 4),
]


@pytest.mark.parametrize("family,cells,sign,bits", CASES)
def test_marginals_correlations_and_std_match_the_reference(family, cells, sign, bits):
    noise = noise_from_profile(_profile(family, cells), mapping="bitsliced", bits=bits, sign=sign, read=False)
    assert not noise._fast()
    assert isinstance(noise.draw_sampler(W), DeviceSampler)
    ref, new = _samples(noise)
    for j in range(ref.shape[1]):
        assert stats.ks_2samp(ref[:, j], new[:, j]).pvalue > KS_P_MIN, j
    cr, cn = np.corrcoef(ref.T), np.corrcoef(new.T)
    for a in range(ref.shape[1]):
        for b in range(a + 1, ref.shape[1]):
            assert abs(cr[a, b] - cn[a, b]) <= _corr_tolerance(cr[a, b], N), (a, b)
    if family == "gaussian":  # noise_std is the exact std (stuck mixture included): within 4 standard errors
        sd = noise.noise_std(W)["w"].numpy()
        # the sample std's relative standard error is sqrt((kurtosis - 1) / (4 N)); stuck faults make the
        # law heavy-tailed (kurtosis ~8 here, not a Gaussian's 3), so the measured kurtosis sets it
        kurt = stats.kurtosis(new, axis=0, fisher=False)
        assert np.all(np.abs(new.std(0, ddof=1) / sd - 1) <= 4 * np.sqrt((kurt - 1) / (4 * N)))


def test_read_noise_and_the_analog_mapping_match_the_reference():
    prof = _profile("lognormal", 4, read_noise=0.01)
    for noise in (
        noise_from_profile(prof, mapping="bitsliced", bits=4, read=True),
        noise_from_profile(_profile("gaussian", 4), mapping="analog"),
    ):
        ref, new = _samples(noise)
        for j in range(ref.shape[1]):
            assert stats.ks_2samp(ref[:, j], new[:, j]).pvalue > KS_P_MIN, j


@pytest.mark.parametrize("family", ["gaussian", "lognormal"])
def test_draws_do_not_depend_on_chunking_or_threads(family):
    noise = noise_from_profile(_profile(family, 4), mapping="bitsliced", bits=4, read=False)

    def gens(r):
        return [draw_generator(5, i, "cpu") for i in r]

    # 40,000 weights: above the size where draws are filled by worker threads (models.noise.base)
    big = {"w": torch.linspace(-1.0, 1.0, 40000, dtype=torch.float64)}
    for w in (W, big):
        with torch_threads(1):
            sampler = noise.draw_sampler(w)
            whole = sampler(gens(range(6)))["w"].clone()
            parts = torch.cat([sampler(gens(range(0, 2)))["w"].clone(), sampler(gens(range(2, 6)))["w"].clone()])
        with torch_threads(2):  # worker threads fill the draws; the chunk's arithmetic runs multi-threaded
            again = noise.draw_sampler(w)(gens(range(6)))["w"].clone()
        assert torch.equal(whole, parts) and torch.equal(whole, again)


@pytest.mark.parametrize("cells,sign", [(4, "separate"), (3, "separate"), (4, "differential")])
def test_stuck_weights_made_by_each_draws_worker_or_for_the_chunk_are_the_same(cells, sign, monkeypatch):
    """A layer with many stuck devices per draw has each draw's worker make its stuck weights; a small one has
    them made for the whole chunk at once. Both add every weight's terms in the same order: the same bits, with
    the slot field (4 cells) and the per-device field (3 cells), one sign array or two, one thread or two."""
    noise = noise_from_profile(_profile("gaussian", cells), mapping="bitsliced", bits=4, sign=sign, read=False)
    big = {"w": torch.linspace(-1.0, 1.0, 40000, dtype=torch.float64)}  # filled by worker threads
    for w in (W, big):
        draws = {}
        for per_draw in (False, True):
            monkeypatch.setattr(device_sampler, "_PER_DRAW_STUCK", 0 if per_draw else 1 << 62)
            for threads in (1, 2):
                with torch_threads(threads):
                    sampler = noise.draw_sampler(w)
                    assert (
                        isinstance(sampler, DeviceSampler) and sampler._stuck_per_draw(sampler.layers["w"]) is per_draw
                    )
                    draws[per_draw, threads] = sampler([draw_generator(9, i, "cpu") for i in range(5)])["w"].clone()
        first = draws[False, 1]
        assert all(torch.equal(first, d) for d in draws.values())


@pytest.mark.parametrize("family", ["gaussian", "lognormal"])
def test_weights_whose_devices_are_all_stuck_hold_their_stuck_values(family):
    """At stuck rates 0.45 + 0.45 a weight's D = 2 devices are all stuck in 0.81 of the draws: the reference puts
    it exactly on one of its stuck sums, and the sampler must too (no Gaussian, read noise or field share left).

    The sampler reaches a stuck sum through sums and a square root of a difference of variances, so it lands
    within a few sqrt(eps) of the weight's scale of it (float64: ~1e-8), while the smallest noise term left
    behind by a mistake (read noise 0.01 g_max) would be ~1e-2 of the scale.
    """
    extra = {"read_noise": 0.01} if family == "lognormal" else {}
    prof = _profile(family, 4, stuck=(0.45, 0.45), **extra)
    noise = noise_from_profile(prof, mapping="bitsliced", bits=4, read=family == "lognormal")
    ref, new = _samples(noise)
    p_all = 0.9**2
    z = stats.norm.isf(KS_P_MIN / 2)  # the file's per-comparison false-alarm rate, two-sided
    bound = z * math.sqrt(p_all * (1 - p_all) / N)
    for j in range(ref.shape[1]):
        values, counts = np.unique(ref[:, j], return_counts=True)
        atoms = values[counts > 1]  # a continuous part never repeats: repeated values are stuck sums
        scale = float(np.abs(ref[:, j]).max())
        near = np.abs(new[:, j, None] - atoms[None, :]).min(1) <= 8 * math.sqrt(np.finfo(np.float64).eps) * scale
        assert abs(counts[counts > 1].sum() / N - p_all) <= bound, j  # the reference, as a check of the test
        assert abs(near.mean() - p_all) <= bound, (j, near.mean())


@pytest.mark.parametrize(
    "family,sign", [("gaussian", "separate"), ("gaussian", "differential"), ("lognormal", "differential")]
)
def test_the_spatial_field_does_not_depend_on_its_block_size(family, sign, monkeypatch):
    """The slot field is built in blocks of tiles; blocks of one tile (Gaussian: 5 draws together) or three
    (log-normal, draw by draw: they straddle the boundary between the two sign arrays of a differential pair)
    give the same draws, bit for bit, as one block."""
    noise = noise_from_profile(_profile(family, 4), mapping="bitsliced", bits=4, sign=sign, read=False)
    gens = [draw_generator(7, i, "cpu") for i in range(5)]
    sampler = noise.draw_sampler(W)
    assert isinstance(sampler, DeviceSampler) and sampler.layers["w"].slot_rows is not None
    whole = sampler(gens)["w"].clone()
    monkeypatch.setattr(device_sampler, "_FIELD_BLOCK", 6)  # 6 numbers: 3 tiles of 2 slots per draw
    blocks = noise.draw_sampler(W)([draw_generator(7, i, "cpu") for i in range(5)])["w"]
    assert torch.equal(whole, blocks)


def test_stuck_positions_are_a_bernoulli_process():
    n_dev, p, reps = 5000, 0.02, 400
    hits = torch.zeros(n_dev)
    for i in range(reps):
        pos = stuck_positions(n_dev, p, torch.Generator().manual_seed(i), torch.device("cpu"))
        assert torch.all(pos[1:] > pos[:-1]) and int(pos.min()) >= 0 and int(pos.max()) < n_dev
        hits[pos] += 1
    total = reps * n_dev
    # overall rate within 4 binomial standard errors
    assert abs(float(hits.sum()) / total - p) <= 4 * math.sqrt(p * (1 - p) / total)
    # no position is favoured: the first and second halves' rates agree within 4 standard errors of a difference
    half = total / 2
    r1, r2 = float(hits[: n_dev // 2].sum()) / half, float(hits[n_dev // 2 :].sum()) / half
    assert abs(r1 - r2) <= 4 * math.sqrt(2 * p * (1 - p) / half)
    # the gaps' law: P(device 0 hit) = p, as every other device (first device rate within 4 SE over reps)
    assert abs(float(hits[:50].mean()) / reps - p) <= 4 * math.sqrt(p * (1 - p) / (50 * reps))
    cpu = torch.device("cpu")
    assert stuck_positions(10, 0.0, torch.Generator(), cpu).numel() == 0
    assert stuck_positions(10, 1.0, torch.Generator(), cpu).tolist() == list(range(10))


def test_gradients_through_the_weights_take_the_reference_path():
    noise = noise_from_profile(_profile("gaussian", 4), mapping="bitsliced", bits=4, read=False)
    w = {"w": W["w"].clone().requires_grad_(True)}
    out = noise.draw_sampler(w)([draw_generator(0, 0, "cpu")])["w"]
    out.sum().backward()
    assert w["w"].grad is not None and torch.equal(w["w"].grad, torch.ones_like(w["w"]))
