"""Input dataclasses for the fitters: plain numpy arrays in siemens and seconds, validated on creation.

The run-file adapter fills these from HIL runs; tests and benchmarks fill them from synthetic draws.
Every class checks shapes, finiteness and ranges in ``__post_init__`` and raises ``ValueError`` with a
one-line message naming the field, so a fitter never sees malformed input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from calibration.noise_terms import GateMap


def _as_1d(name: str, a: object, dtype: DTypeLike = np.float64) -> np.ndarray:
    """Return ``a`` as a 1-D array of ``dtype`` or raise a ValueError naming the field."""
    arr = np.asarray(a, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    return arr


def _as_nd(name: str, a: object, ndim: int, dtype: DTypeLike = np.float64) -> np.ndarray:
    """Return ``a`` as an ``ndim``-D array or raise a ValueError naming the field."""
    arr = np.asarray(a, dtype=dtype)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    return arr


def _finite(name: str, arr: np.ndarray) -> None:
    """Refuse NaN/inf values, which would silently poison every statistic."""
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")


def _same_len(names: tuple[str, ...], arrays: tuple[np.ndarray, ...]) -> None:
    """Refuse arrays whose first dimensions differ."""
    n = {a.shape[0] for a in arrays}
    if len(n) > 1:
        shapes = ", ".join(f"{k}={a.shape}" for k, a in zip(names, arrays))
        raise ValueError(f"arrays must have the same length: {shapes}")


@dataclass
class ProgrammingDataset:
    """One programming campaign: each row is one cell programmed to ``target_g`` then read once.

    target_g : (N,) S   target conductance of the cell (the level it was programmed to)
    g        : (N,) S   conductance read right after programming (at ``t_read_s``)
    pulses   : (N,) int programming pulses the cell received (None when not recorded)
    verified : bool     True for write-verify (closed-loop) programming, False for open-loop
    t_read_s : float    seconds between the end of programming and the read (the t0 of relaxation)
    written  : (N,) bool the rows the programming wrote (None: all). A cell write-verify found already in
                        tolerance gets no pulse: it counts in the pulses per device, but its error is the older
                        state it kept (with an older, slower relaxation clock), not the error write-verify leaves
    gate_map : the gate calibration open-loop programming took its gates from (None: not recorded)
    reverify_rounds : int  program-settle-verify rounds after each write-verify (0: write-verify once)
    settle_s : float s     wait before each re-check
    tol_s    : float S     the write-verify (and re-check) tolerance (None: not recorded; needed with rounds > 0)
    touchups : (N,) int    touch-ups (re-verify write-verifies) each row got, 0 to reverify_rounds (None: none)
    touchup_pulses : (N,) int  of `pulses`, those of the touch-ups (None: none)
    """

    target_g: np.ndarray
    g: np.ndarray
    pulses: np.ndarray | None = None
    verified: bool = False
    t_read_s: float = 1.0
    written: np.ndarray | None = None
    gate_map: GateMap | None = None
    reverify_rounds: int = 0
    settle_s: float = 0.0
    tol_s: float | None = None
    touchups: np.ndarray | None = None
    touchup_pulses: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.target_g = _as_1d("target_g", self.target_g)
        self.g = _as_1d("g", self.g)
        _finite("target_g", self.target_g)
        _finite("g", self.g)
        _same_len(("target_g", "g"), (self.target_g, self.g))
        if self.target_g.size < 2:
            raise ValueError("a programming dataset needs at least 2 readings")
        if np.any(self.target_g < 0):
            raise ValueError("target_g must be >= 0 S")
        if self.pulses is not None:
            self.pulses = _as_1d("pulses", self.pulses)
            _finite("pulses", self.pulses)
            _same_len(("target_g", "pulses"), (self.target_g, self.pulses))
            if np.any(self.pulses < 0):
                raise ValueError("pulses must be >= 0")
        if not self.t_read_s > 0:
            raise ValueError(f"t_read_s must be > 0 s, got {self.t_read_s}")
        if self.written is not None:
            self.written = _as_1d("written", self.written, dtype=bool)
            _same_len(("target_g", "written"), (self.target_g, self.written))
            if self.written.sum() < 2:
                raise ValueError("a programming dataset needs at least 2 written rows (written marks fewer)")
        self._check_reverify()

    def _check_reverify(self) -> None:
        """Re-verify settings and per-row touch-up counts: whole, in range, one per row, only for write-verify."""
        rounds = self.reverify_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
            raise ValueError(f"reverify_rounds must be a whole number >= 0, got {rounds!r}")
        self.reverify_rounds = int(rounds)
        if not (np.isfinite(self.settle_s) and self.settle_s >= 0):
            raise ValueError(f"settle_s must be a finite time >= 0 s, got {self.settle_s}")
        if self.tol_s is not None and not (np.isfinite(self.tol_s) and self.tol_s > 0):
            raise ValueError(f"tol_s must be a finite conductance > 0 S, got {self.tol_s}")
        if rounds == 0:
            if self.touchups is not None and np.any(np.asarray(self.touchups) != 0):
                raise ValueError("touchups are given but reverify_rounds is 0: give the rounds they were measured with")
            return
        if not self.verified:
            raise ValueError("reverify_rounds > 0 needs a write-verify dataset (verified=True)")
        if self.tol_s is None or self.touchups is None or self.touchup_pulses is None or self.pulses is None:
            raise ValueError("reverify_rounds > 0 needs tol_s, pulses, touchups and touchup_pulses (one per row)")
        self.touchups = _as_1d("touchups", self.touchups)
        self.touchup_pulses = _as_1d("touchup_pulses", self.touchup_pulses)
        for name in ("touchups", "touchup_pulses"):
            _finite(name, getattr(self, name))
        _same_len(("target_g", "touchups", "touchup_pulses"), (self.target_g, self.touchups, self.touchup_pulses))
        if np.any(self.touchups < 0) or np.any(self.touchups > rounds):
            raise ValueError(f"touchups must be from 0 to reverify_rounds ({rounds})")
        if np.any(self.touchup_pulses < 0) or np.any(self.touchup_pulses > self.pulses):
            raise ValueError("touchup_pulses must be from 0 to the row's pulses")

    @property
    def error(self) -> np.ndarray:
        """Programming error g - target (S)."""
        return self.g - self.target_g

    def law(self) -> ProgrammingDataset:
        """The rows the error law comes from: the written ones (every row when `written` is None)."""
        if self.written is None:
            return self
        w = self.written
        pick = lambda a: None if a is None else a[w]
        return ProgrammingDataset(
            self.target_g[w],
            self.g[w],
            pick(self.pulses),
            self.verified,
            self.t_read_s,
            None,
            self.gate_map,
            self.reverify_rounds,
            self.settle_s,
            self.tol_s,
            pick(self.touchups),
            pick(self.touchup_pulses),
        )


@dataclass
class RelaxationDataset:
    """Reads of programmed cells at several times after programming (flat, one row per read).

    target_g : (N,) S  target conductance of the cell
    t_s      : (N,) s  time after the end of programming at which this read was taken (> 0)
    g        : (N,) S  conductance read at t_s
    t0_s     : float   reference time of the law (default: the smallest t_s)
    """

    target_g: np.ndarray
    t_s: np.ndarray
    g: np.ndarray
    t0_s: float | None = None

    def __post_init__(self) -> None:
        self.target_g = _as_1d("target_g", self.target_g)
        self.t_s = _as_1d("t_s", self.t_s)
        self.g = _as_1d("g", self.g)
        for k in ("target_g", "t_s", "g"):
            _finite(k, getattr(self, k))
        _same_len(("target_g", "t_s", "g"), (self.target_g, self.t_s, self.g))
        if np.any(self.t_s <= 0):
            raise ValueError("t_s must be > 0 s (time after programming)")
        if self.t0_s is None:
            self.t0_s = float(self.t_s.min())
        if not self.t0_s > 0:
            raise ValueError(f"t0_s must be > 0 s, got {self.t0_s}")
        if np.unique(self.t_s).size < 2:
            raise ValueError("a relaxation dataset needs reads at >= 2 distinct times")


@dataclass
class ReadNoiseDataset:
    """Repeated reads of the same cells without reprogramming.

    g_reads  : (N_cells, R) S  R successive reads of each cell, in time order (R >= 3)
    target_g : (N_cells,) S    target conductance of each cell (None: cells are grouped by their mean)
    """

    g_reads: np.ndarray
    target_g: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.g_reads = _as_nd("g_reads", self.g_reads, 2)
        _finite("g_reads", self.g_reads)
        if self.g_reads.shape[1] < 3:
            raise ValueError(f"g_reads needs >= 3 reads per cell, got {self.g_reads.shape[1]}")
        if self.g_reads.shape[0] < 1:
            raise ValueError("g_reads has no cells")
        if self.target_g is not None:
            self.target_g = _as_1d("target_g", self.target_g)
            _finite("target_g", self.target_g)
            _same_len(("g_reads", "target_g"), (self.g_reads, self.target_g))


@dataclass
class EnduranceDataset:
    """SET/RESET cycling of cells, read in both states at selected cycles.

    cycles            : (C,) int     cycle numbers at which the reads were taken (strictly increasing, >= 1)
    g_lrs             : (N, C) S     read after SET (low-resistance state); NaN after a cell failed
    g_hrs             : (N, C) S     read after RESET (high-resistance state); NaN after a cell failed
    cycles_to_failure : (N,) float   cycle at which the cell failed, or the last cycle tried if it never did
    failed            : (N,) bool    True if the cell failed (False: right-censored at cycles_to_failure)
    When ``cycles_to_failure``/``failed`` are None they are derived from the reads: a cell fails at
    the first read cycle from which its LRS/HRS ratio stays below ``min_window``.
    """

    cycles: np.ndarray
    g_lrs: np.ndarray
    g_hrs: np.ndarray
    cycles_to_failure: np.ndarray | None = None
    failed: np.ndarray | None = None
    min_window: float = 2.0

    def __post_init__(self) -> None:
        self.cycles = _as_1d("cycles", self.cycles)
        _finite("cycles", self.cycles)
        if self.cycles.size < 1 or np.any(self.cycles < 1) or np.any(np.diff(self.cycles) <= 0):
            raise ValueError("cycles must be strictly increasing cycle numbers >= 1")
        self.g_lrs = _as_nd("g_lrs", self.g_lrs, 2)
        self.g_hrs = _as_nd("g_hrs", self.g_hrs, 2)
        if self.g_lrs.shape != self.g_hrs.shape or self.g_lrs.shape[1] != self.cycles.size:
            raise ValueError(
                f"g_lrs {self.g_lrs.shape} and g_hrs {self.g_hrs.shape} must both be (N, len(cycles)={self.cycles.size})"
            )
        for k in ("g_lrs", "g_hrs"):
            a = getattr(self, k)
            if np.any(np.isinf(a)) or np.any(a[np.isfinite(a)] <= 0):
                raise ValueError(f"{k} must be > 0 S (NaN marks cycles after failure)")
        if not self.min_window > 1:
            raise ValueError(f"min_window must be > 1, got {self.min_window}")
        if (self.cycles_to_failure is None) != (self.failed is None):
            raise ValueError("give both cycles_to_failure and failed, or neither")
        if self.cycles_to_failure is None:
            self.cycles_to_failure, self.failed = self._derive_failures()
        else:
            self.cycles_to_failure = _as_1d("cycles_to_failure", self.cycles_to_failure)
            self.failed = _as_1d("failed", self.failed, dtype=bool)
            _finite("cycles_to_failure", self.cycles_to_failure)
            _same_len(("g_lrs", "cycles_to_failure", "failed"), (self.g_lrs, self.cycles_to_failure, self.failed))
            if np.any(self.cycles_to_failure <= 0):
                raise ValueError("cycles_to_failure must be > 0")

    def _derive_failures(self) -> tuple[np.ndarray, np.ndarray]:
        """First read cycle from which the window stays below min_window (or NaN reads start)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = self.g_lrs / self.g_hrs
        bad = ~(ratio >= self.min_window)  # NaN counts as bad
        # stays bad from column j onward  <=>  reverse cumulative AND
        tail_bad = np.flip(np.logical_and.accumulate(np.flip(bad, axis=1), axis=1), axis=1)
        failed = np.any(tail_bad, axis=1)
        first = np.argmax(tail_bad, axis=1)
        ctf = np.where(failed, self.cycles[first], self.cycles[-1]).astype(np.float64)
        return ctf, failed


@dataclass
class SpatialDataset:
    """Programming errors of the same array over several repetitions (program, read, re-program ...).

    errors : (R, rows, cols) S   g - target of every cell in each of R >= 2 repetitions
    """

    errors: np.ndarray

    def __post_init__(self) -> None:
        self.errors = _as_nd("errors", self.errors, 3)
        _finite("errors", self.errors)
        if self.errors.shape[0] < 2:
            raise ValueError(f"errors needs >= 2 repetitions to estimate a covariance, got {self.errors.shape[0]}")
        if self.errors.shape[1] * self.errors.shape[2] < 2:
            raise ValueError("errors needs >= 2 cells")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the array."""
        return int(self.errors.shape[1]), int(self.errors.shape[2])


@dataclass
class ErrorMapDataset:
    """Programming errors of one array programmed once, by position (for a stationary spatial model).

    errors : (rows, cols) S   g - target of every cell
    """

    errors: np.ndarray

    def __post_init__(self) -> None:
        self.errors = _as_nd("errors", self.errors, 2)
        _finite("errors", self.errors)
        if min(self.errors.shape) < 2:
            raise ValueError(f"errors map must be at least 2x2, got {self.errors.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the array."""
        return int(self.errors.shape[0]), int(self.errors.shape[1])
