"""Counter-based random numbers for the simulated chip: a draw is a pure function of what it is for.

Every random number the array uses after construction is ``hash(chip seed, cell, event, purpose,
draw index)``, turned into a uniform on (0, 1) and, where needed, a standard normal by the inverse
normal CDF.  ``event`` is the cell's own operation counter (each pulse, read or endurance call on a
cell takes the next value), so the noise a cell sees depends only on its own history: never on which
other cells share a request, how the host splits a batch, or in which order requests interleave.

The hash is three rounds of the SplitMix64 finaliser (Steele, Lea & Flood 2014), each taking one
input word the way SplitMix64 takes its counter (``mix(key + (word + 1) * golden_gamma)``): chip key
-> cell key (cached per cell) -> event key (one per cell and operation) -> draw.  All of it is
uint64 numpy arithmetic, which wraps modulo 2**64 identically on every machine; the normal comes
from ``scipy.special.ndtri`` (scalar Cephes code, no CPU-dependent dispatch).  Uniforms carry 52
random bits, ``(k + 0.5) / 2**52``, so they never reach 0 or 1 and normals are finite (|z| < 8.1).

Draws made once per position of the chip rather than per operation (the spatial gain field) come from
`site_normals`: the same hash keyed by (chip seed, purpose, row, column), in a domain of its own.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from scipy.special import ndtri

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, SplitMix64's increment
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S12 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(12)
_DOMAIN = 0x5EED_CE11_0000_0001  # separates these streams from any other use of the chip seed
_SITE_DOMAIN = 0x5EED_517E_0000_0002  # the per-site streams (`site_normals`): apart from the per-cell ones


class Tag(IntEnum):
    """What a draw is for: each purpose has its own stream, so adding a draw never shifts another."""

    FORM_C2C = 1  # cycle-to-cycle LRS spread of a forming pulse
    KINETICS = 2  # switching-rate factor xi of a SET/RESET pulse
    TARGET_C2C = 3  # cycle-to-cycle spread of the state a SET/RESET pulse heads for
    RELAX_PATH = 4  # the Brownian relaxation path drawn at reprogramming (one draw per node)
    RTN = 5  # trap occupancy at a read
    READ_NOISE = 6  # white read noise
    CYCLE_FAIL = 7  # the value a cell worn out during endurance freezes at
    CYCLE_SET_RATE = 8  # endurance: SET rate factor (draw = read point * 4 + warm-up cycle)
    CYCLE_SET_TARGET = 9
    CYCLE_RESET_RATE = 10
    CYCLE_RESET_TARGET = 11
    CYCLE_RTN_LRS = 12  # endurance read after SET: trap occupancy (draw = read point)
    CYCLE_RTN_HRS = 13
    CYCLE_NOISE_LRS = 14  # endurance read after SET: white noise (draw = read point)
    CYCLE_NOISE_HRS = 15
    SPATIAL_FIELD = 16  # the white noise behind the spatially correlated gain field (one draw per site, `site_normals`)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, in place on a uint64 array this module owns."""
    # a single cell's few words: Python ints give the same bits without numpy's cost per call
    if z.size <= _SCALAR_MIX_MAX and z.flags.c_contiguous:
        flat = z.reshape(-1)
        for i in range(flat.size):
            flat[i] = _scalar_mix(int(flat[i]))
        return z
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


_SCALAR_MIX_MAX = 8  # up to this many words, the Python loop of `_mix` is faster than its five array passes


def _absorb(key: np.ndarray | int, word: np.ndarray | int) -> np.ndarray:
    """mix(key + (word + 1) * gamma): the SplitMix64 output of stream `key` at position `word` (broadcasts).

    Always a new array (the inputs are never modified). Array arithmetic wraps modulo 2**64 silently;
    Python-int operands are reduced modulo 2**64 first, so no numpy scalar arithmetic (which warns) occurs.
    """
    if isinstance(word, int):
        z = np.array(key, dtype=np.uint64, ndmin=1)
        z += np.uint64(((word + 1) * _GAMMA) & _MASK)
        return _mix(z)
    z = np.array(word, dtype=np.uint64, ndmin=1)
    z += np.uint64(1)
    z *= np.uint64(_GAMMA)
    z = z + (np.uint64(key & _MASK) if isinstance(key, int) else np.asarray(key, dtype=np.uint64))
    return _mix(z)


def _scalar_mix(x: int) -> int:
    """The same finaliser on a Python int (for the chip key, computed once)."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _draw_word(tag: int, draw: np.ndarray | int) -> np.ndarray | int:
    """Purpose and draw index in one word: tag in the high 16 bits, draw index below (< 2**48)."""
    if isinstance(draw, (int, np.integer)):
        return (int(tag) << 48) | int(draw)
    return np.asarray(draw, dtype=np.uint64) | np.uint64(int(tag) << 48)


class CellStreams:
    """The random streams of one chip: stateless, so they need no saving (the event counters do)."""

    def __init__(self, seed: int, n_cells: int) -> None:
        self.seed = int(seed)
        key = _scalar_mix((self.seed * _GAMMA + _DOMAIN) & _MASK)
        self._cell_keys = _absorb(key, np.arange(n_cells, dtype=np.uint64))

    def event_keys(self, idx: np.ndarray, events: np.ndarray) -> np.ndarray:
        """One key per (cell, event counter value); every draw of that operation derives from it."""
        return _absorb(self._cell_keys[np.asarray(idx, dtype=np.int64)], events)

    def bits(self, keys: np.ndarray, tag: int, draw: np.ndarray | int = 0) -> np.ndarray:
        """64 random bits per element of broadcast(keys, draw)."""
        return _absorb(keys, _draw_word(tag, draw))

    def uniform(self, keys: np.ndarray, tag: int, draw: np.ndarray | int = 0) -> np.ndarray:
        """Uniforms on the open interval (0, 1), shape broadcast(keys, draw)."""
        u = (self.bits(keys, tag, draw) >> _S12).astype(np.float64)
        u += 0.5
        u *= 2.0**-52
        return u

    def normal(self, keys: np.ndarray, tag: int, draw: np.ndarray | int = 0) -> np.ndarray:
        """Standard normals, shape broadcast(keys, draw)."""
        return ndtri(self.uniform(keys, tag, draw))

    def uniforms(self, keys: np.ndarray, tags: np.ndarray) -> np.ndarray:
        """Uniforms of several purposes at draw 0 in one hash pass: column j is `uniform(keys[..., j], tags[j])`.

        keys (..., 1) or (..., len(tags)) broadcasts against the tags; the numbers are those of `uniform`,
        bit for bit (the same modular arithmetic, only done for all purposes at once).
        """
        return uniforms_at(keys, tag_offsets(tags))


def tag_offsets(tags: np.ndarray) -> np.ndarray:
    """What each purpose (at draw 0) adds to an event key before mixing: (word + 1) * gamma mod 2**64."""
    return np.array([((((int(t) << 48) + 1) * _GAMMA) & _MASK) for t in np.ravel(tags)], dtype=np.uint64)


def uniforms_at(keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """`CellStreams.uniforms` with the purposes' `tag_offsets` computed beforehand (the same numbers)."""
    z = np.add(keys, offsets, dtype=np.uint64)
    u = (_mix(z) >> _S12).astype(np.float64)
    u += 0.5
    u *= 2.0**-52
    return u


def site_normals(seed: int, rows: int, cols: int, tag: int) -> np.ndarray:
    """(rows, cols) standard normals keyed by (chip seed, purpose, row, column): drawn before any event.

    A site's draw depends on its (row, col) only, not on the array size, so the top-left block of a
    bigger chip of the same seed sees the same draws; its own domain keeps it apart from `CellStreams`.
    """
    if int(rows) != rows or int(cols) != cols or rows < 1 or cols < 1:
        raise ValueError(f"site_normals needs positive integer rows and cols, got {rows!r} and {cols!r}")
    key = _absorb(_scalar_mix((int(seed) * _GAMMA + _SITE_DOMAIN) & _MASK), int(tag))
    row_keys = _absorb(key, np.arange(int(rows), dtype=np.uint64))
    bits = _absorb(row_keys[:, None], np.arange(int(cols), dtype=np.uint64)[None, :])
    u = (bits >> _S12).astype(np.float64)
    u += 0.5
    u *= 2.0**-52
    return ndtri(u)
