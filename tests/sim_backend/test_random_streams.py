"""The counter-based random streams: reproducible, uniform, normal, and independent across cells, events and tags.

Each statistical check is a test at a stated level alpha on a fixed input set (so it passes or fails the
same way every run); a correct generator fails one of them with probability about alpha.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sim_backend.random_streams import CellStreams, Tag

ALPHA = 1e-3
N_CELLS = 4096


@pytest.fixture(scope="module")
def streams() -> CellStreams:
    return CellStreams(seed=7, n_cells=N_CELLS)


def _keys(s: CellStreams, events: int) -> np.ndarray:
    """Event keys of every cell for events 0..events-1, shape (events, cells): structured, adjacent inputs."""
    idx = np.arange(N_CELLS)
    return np.stack([s.event_keys(idx, np.full(N_CELLS, e, dtype=np.uint64)) for e in range(events)])


def test_same_inputs_same_numbers_and_the_seed_matters(streams: CellStreams) -> None:
    idx, ev = np.arange(10), np.arange(10, dtype=np.uint64)
    again = CellStreams(seed=7, n_cells=N_CELLS)
    k1, k2 = streams.event_keys(idx, ev), again.event_keys(idx, ev)
    assert streams.normal(k1, Tag.READ_NOISE, 3).tobytes() == again.normal(k2, Tag.READ_NOISE, 3).tobytes()
    other = CellStreams(seed=8, n_cells=N_CELLS)
    assert not np.any(streams.uniform(k1, Tag.RTN) == other.uniform(other.event_keys(idx, ev), Tag.RTN))
    # A draw does not depend on what else is drawn with it (elementwise, broadcast shapes)
    grid = streams.normal(k1[:, None], Tag.RELAX_PATH, np.arange(12, dtype=np.uint64)[None, :])
    assert grid.shape == (10, 12) and grid[4, 7] == streams.normal(k1[4:5], Tag.RELAX_PATH, 7)[0]


def test_uniforms_are_uniform_on_the_open_interval(streams: CellStreams) -> None:
    u = streams.uniform(_keys(streams, 50), Tag.RTN).ravel()  # 204800 draws
    assert 0.0 < u.min() and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > ALPHA


def test_normals_are_standard_normal(streams: CellStreams) -> None:
    z = streams.normal(_keys(streams, 50), Tag.READ_NOISE).ravel()
    assert np.all(np.isfinite(z))
    assert stats.kstest(z, "norm").pvalue > ALPHA
    # the tails too: the count beyond 3 sigma is binomial(n, 2 * Phi(-3))
    n, p = z.size, 2 * stats.norm.sf(3.0)
    assert stats.binomtest(int(np.sum(np.abs(z) > 3)), n, p).pvalue > ALPHA


def _independent(x: np.ndarray, y: np.ndarray, bins: int = 16) -> float:
    """p-value of a chi-square test that (x, y) pairs of uniforms are uniform on the unit square."""
    h, _, _ = np.histogram2d(x, y, bins=bins, range=[[0, 1], [0, 1]])
    return float(stats.chisquare(h.ravel()).pvalue)


@pytest.mark.parametrize("what", ["tags", "adjacent cells", "adjacent events", "adjacent draws"])
def test_streams_are_independent(streams: CellStreams, what: str) -> None:
    keys = _keys(streams, 51)
    if what == "tags":
        x, y = streams.uniform(keys, Tag.KINETICS), streams.uniform(keys, Tag.TARGET_C2C)
    elif what == "adjacent cells":
        u = streams.uniform(keys, Tag.KINETICS)
        x, y = u[:, :-1], u[:, 1:]
    elif what == "adjacent events":
        u = streams.uniform(keys, Tag.KINETICS)
        x, y = u[:-1], u[1:]
    else:
        x, y = streams.uniform(keys, Tag.RELAX_PATH, 0), streams.uniform(keys, Tag.RELAX_PATH, 1)
    x, y = x.ravel(), y.ravel()
    assert _independent(x, y) > ALPHA
    # and no linear correlation: |r| < z_(1 - alpha/2) / sqrt(n) under independence
    r = np.corrcoef(x, y)[0, 1]
    assert abs(r) < stats.norm.isf(ALPHA / 2) / np.sqrt(x.size)


@pytest.mark.parametrize("size", [1, 2, 5, 8, 9, 64])
def test_the_few_word_mix_gives_the_array_mix_bits(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_mix` on a handful of words runs on Python ints: the same SplitMix64 bits as the array passes, in place,
    for edge words (0, all ones, high bit) and random ones; a strided view takes the array passes."""
    import sim_backend.random_streams as rs

    rng = np.random.default_rng(size)
    words = rng.integers(0, 2**64, size, dtype=np.uint64, endpoint=False)
    words[: min(size, 3)] = np.array([0, 2**64 - 1, 2**63], dtype=np.uint64)[: min(size, 3)]
    fast = words.copy()
    out = rs._mix(fast)
    monkeypatch.setattr(rs, "_SCALAR_MIX_MAX", 0)  # the array passes only
    slow = rs._mix(words.copy())
    assert out is fast and np.array_equal(fast, slow)
    monkeypatch.undo()
    strided = np.zeros(2 * size, dtype=np.uint64)
    strided[::2] = words
    view = strided[::2]
    rs._mix(view)  # not contiguous: mixed in place all the same
    assert np.array_equal(strided[::2], slow) and not strided[1::2].any()
    keys = CellStreams(seed=7, n_cells=16).event_keys(np.array([3]), np.array([5], dtype=np.uint64))
    monkeypatch.setattr(rs, "_SCALAR_MIX_MAX", 0)
    assert np.array_equal(
        keys, CellStreams(seed=7, n_cells=16).event_keys(np.array([3]), np.array([5], dtype=np.uint64))
    )
