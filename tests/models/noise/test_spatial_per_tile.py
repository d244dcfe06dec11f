"""Profile spatial fields: one independent draw per physical tile (rows*cols devices), the profile's covariance inside."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibration.noise_terms import SpatialModel
from calibration.profile import NoiseProfile
from models.montecarlo import draw_generator
from models.noise.factory import noise_from_profile
from models.noise.profile_noise import ProfileNoise

torch.set_num_threads(1)

SIGMA = 0.01  # device sigma, in units of g_max (the paper Gaussian profile: 0.4 uS at g_max = 40 uS)
# cell correlation of the spatial part (2x2 cells, positive definite: eigenvalues 0.15 ... 2.25)
R = np.array([[1.0, 0.5, 0.2, 0.6], [0.5, 1.0, 0.5, 0.2], [0.2, 0.5, 1.0, 0.5], [0.6, 0.2, 0.5, 1.0]])
SHARE = 0.5  # the spatial part holds half of each device's variance


def _profile() -> NoiseProfile:
    prof = NoiseProfile.from_paper("gaussian", sigma=SIGMA)
    s2 = (SIGMA * prof.g_max) ** 2
    vals, vecs = np.linalg.eigh(SHARE * s2 * R)
    prof.spatial = SpatialModel(shape=(2, 2), eigvals=vals, eigvecs=vecs, n_repeats=1, total_variance=4 * SHARE * s2)
    return prof


def _corr_tolerance(rho: float, n: int) -> float:
    """4 standard errors of a sample correlation of n normal pairs ((1 - rho^2) / sqrt(n)), plus float slack."""
    return 4 * (1 - rho**2) / math.sqrt(n) + 1e-9


def test_devices_at_one_cell_of_different_tiles_are_independent_and_a_tile_keeps_the_profile():
    # 2-bit weights on the profile's 2-bit devices: one device per weight, 8 weights = two 2x2 tiles
    noise = noise_from_profile(_profile(), mapping="bitsliced", bits=2, read=False, stuck=False)
    w = {"w": torch.tensor([1, 2, 3, 1, 3, 2, 1, 3], dtype=torch.float64) / 3}  # every device off level 0
    n = 20000
    e = (noise.sample_batch(w, n, torch.Generator().manual_seed(1))["w"] - w["w"]).numpy()
    corr = np.corrcoef(e.T)
    for j in range(4):  # the same cell, tiles 0 and 1
        assert abs(corr[j, j + 4]) <= _corr_tolerance(0.0, n)
    for tile in (0, 4):  # the profile's cell correlation, scaled by the spatial share of the variance
        for a in range(4):
            for b in range(a + 1, 4):
                rho = SHARE * R[a, b]
                assert corr[tile + a, tile + b] == pytest.approx(rho, abs=_corr_tolerance(rho, n))
    # the per-device total variance is kept: std within 4 standard errors (sigma / sqrt(2n)) of noise_std
    sd = noise.noise_std(w)["w"].numpy()
    assert np.allclose(e.std(0, ddof=1), sd, rtol=4 / math.sqrt(2 * n))
    assert isinstance(noise, ProfileNoise)
    tiles = noise.device_errors("w", w["w"]).tile
    assert tiles is not None and tiles.flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_noise_std_counts_the_shared_field_only_within_a_tile():
    """Analog pairs of 3 weights: G+ on devices 0-2, G- on 3-5; weight 0's pair shares tile 0, the others do not."""
    noise = noise_from_profile(_profile(), mapping="analog", read=False, stuck=False)
    w = {"w": torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)}
    sd = noise.noise_std(w)["w"].numpy()
    # a weight's error is k (dG+ - dG-); devices of one tile covary by SHARE * s2 * R[cell, cell']
    g_max = 4e-5
    k = 1.0 / (g_max - 1e-6)  # max|W| = 1 maps onto the g_min..g_max window
    s2 = (SIGMA * g_max) ** 2
    expected = [
        k * math.sqrt(2 * s2 - 2 * SHARE * s2 * R[0, 3]),  # devices 0 and 3: tile 0, cells 0 and 3
        k * math.sqrt(2 * s2),  # devices 1 (tile 0) and 4 (tile 1)
        k * math.sqrt(2 * s2),  # devices 2 (tile 0) and 5 (tile 1)
    ]
    assert np.allclose(sd, expected, rtol=1e-9)
    n = 20000
    e = (noise.sample_batch(w, n, torch.Generator().manual_seed(2))["w"] - w["w"]).numpy()
    # sample std of n normals: relative standard error 1 / sqrt(2n) = 0.5 %, 4 of them
    assert np.allclose(e.std(0, ddof=1), sd, rtol=4 / math.sqrt(2 * n))


def test_per_tile_fields_are_seeded_per_draw_whatever_the_chunking():
    noise = noise_from_profile(_profile(), mapping="bitsliced", bits=2, read=False, stuck=False)
    w = {"w": torch.tensor([1, 2, 3, 1, 3, 2, 1, 3, 2, 2], dtype=torch.float64) / 3}  # 3 tiles, the last part-full
    sampler = noise.draw_sampler(w)
    gens = lambda ids: [draw_generator(7, i, "cpu") for i in ids]
    whole = sampler(gens(range(6)))["w"].clone()  # (a call's result lives in buffers the next call reuses)
    parts = torch.cat([sampler(gens(range(0, 4)))["w"].clone(), sampler(gens(range(4, 6)))["w"].clone()])
    assert torch.equal(whole, parts)
    assert torch.equal(noise.sample(w, draw_generator(7, 5, "cpu"))["w"], whole[5])
    assert not torch.equal(whole[0], whole[1])
