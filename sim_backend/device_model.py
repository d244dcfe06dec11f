"""Vectorised physics of a simulated 1T1R HfO2 RRAM array: forming, SET/RESET, relaxation, read noise, wear-out.

Cells are addressed by integer index arrays (rows, cols) of equal length; every operation acts on
all addressed cells at once with numpy.  The laws are listed in ``sim_backend.device_params``.

Determinism.  The same seed and the same operations give bit-identical numbers however the cells
are grouped into calls.  Device-to-device parameters are drawn once at construction from the seed;
the optional spatially correlated gain comes from its own per-site stream (`spatial_gain_field`), so
it never shifts the other draws.
Every later random number comes from ``sim_backend.random_streams``: a stateless hash of (seed,
cell, the cell's event counter, purpose, draw index).  Each cell counts its own operations (a pulse,
a read, an endurance call: one event each), so the noise a cell sees depends only on its own
history, never on which cells share a call or in what order calls interleave.  No result depends on
BLAS or on reduction order across cells (sums run over a fixed per-cell axis, in a fixed order).

Timing model (a modelling choice).  The virtual clock counts whole nanoseconds in an integer, so
sums of durations are exact.  A pulse costs its width (rounded to the nanosecond) plus
``pulse_overhead_s``, a read ``read_overhead_s`` (both rounded to the nanosecond).  The cells of
one call are served one after the other in the order given: cell k completes at the clock plus the
durations of cells 0..k, and the clock ends after the last; so a row-major block split into
consecutive calls gets exactly the time stamps of the whole block.  A caller that schedules cells
itself (the firmware's WRITE_VERIFY gives every cell a fixed time slot) passes explicit completion
times ``at_ns`` to `set_pulse`, `reset_pulse` and `read_current`, which then leave the clock alone,
and moves the clock with `advance_to_ns`.  `cycle` cycles each cell in turn: all its cycles and
reads, then the next cell.  The clock is a signed 64-bit count: a move past 2^63 - 1 ns (about 292
years) is refused with a ValueError before anything changes, never wrapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from sim_backend.device_params import DeviceParams
from sim_backend.random_streams import CellStreams, Tag, site_normals, tag_offsets, uniforms_at

# Node positions (in L = log10(1 + dt/t0)) of the piecewise Brownian relaxation path: each cell
# stores one standard normal per segment, so the path is fixed at programming time and reading it
# at any time does not consume randomness (reads at different times are consistently correlated).
_RELAX_NODES = np.array([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
_RELAX_WIDTHS = np.append(np.diff(_RELAX_NODES), np.inf)
_RELAX_SQRT_WIDTHS = np.sqrt(np.diff(_RELAX_NODES))  # of the full segments (the last one is open-ended)
_RELAX_UPPER = np.append(_RELAX_NODES[1:], np.inf)  # where each segment ends
CLOCK_LIMIT_NS = 2**63 - 1  # the clock is a signed 64-bit count of nanoseconds: it is refused beyond, never wraps
_RELAX_DRAWS = np.arange(_RELAX_NODES.size, dtype=np.uint64)[None, :]
_READ_OFFSETS = tag_offsets(np.array([Tag.RTN, Tag.READ_NOISE]))  # the two draws of a read, hashed in one pass
# The draws of one write-verify round (pulse key: kinetics, target, first node of a new relaxation path; read key:
# read noise, trap), in the column order `VerifyBatch.pulse_and_read` uses; which key each column takes.
_ROUND_OFFSETS = tag_offsets(np.array([Tag.KINETICS, Tag.TARGET_C2C, Tag.RELAX_PATH, Tag.READ_NOISE, Tag.RTN]))
_ROUND_KEY_COLUMN = np.array([0, 0, 0, 1, 1])
_EVENT_PAIR = np.array([0, 1], dtype=np.uint64)  # a round's pulse and verify read: two successive events
_ROUNDS_PER_DRAW = 8  # fewest write-verify rounds whose random numbers are hashed together (`VerifyBatch._refill`)
# A refill hashes about this many (cell, round) pairs: few cells left, more rounds ahead, so the last rounds of a
# batch (a handful of cells that do not converge) cost one refill instead of one per eight rounds.
_REFILL_PAIRS = 4096
_IV_CACHE_MAX = 1024  # voltages whose I-V shapes `RRAMArray._iv_shapes` keeps
_MAX_CHUNK_ELEMENTS = 1 << 19
# Probabilists' Gauss-Hermite rule, 16 nodes, weights normalised to sum 1 (numpy hermegauss(16)),
# written out so that no LAPACK call (whose last bits may vary with the machine) enters the physics.
_GH_NODES = (
    -6.630878198393129,
    -5.472225705949343,
    -4.492955302520011,
    -3.6008736241715487,
    -2.7602450476307014,
    -1.9519803457163334,
    -1.1638291005549648,
    -0.3867606045005574,
    0.3867606045005574,
    1.1638291005549648,
    1.9519803457163334,
    2.7602450476307014,
    3.6008736241715487,
    4.492955302520011,
    5.472225705949343,
    6.630878198393129,
)
_GH_WEIGHTS = (
    1.4978147231618412e-10,
    1.309473216286817e-07,
    1.530003216248732e-05,
    0.0005259849265739087,
    0.007266937601184749,
    0.04728475235401406,
    0.1583383727509497,
    0.286568521238012,
    0.286568521238012,
    0.1583383727509497,
    0.04728475235401406,
    0.007266937601184749,
    0.0005259849265739087,
    1.530003216248732e-05,
    1.309473216286817e-07,
    1.4978147231618412e-10,
)
# Warm-up cycles before each endurance read when the pulses switch only partially (see `cycle`).
_N_WARM = 3


@dataclass
class CycleResult:
    """Reads taken during a batch of SET/RESET cycles, plus the bookkeeping of pulses applied."""

    cycles: np.ndarray  # (n_reads,) 1-based cycle number (within this call) after which each read was taken
    lrs_current: np.ndarray  # (n_reads, n_cells) read current (A) right after that cycle's SET pulse
    hrs_current: np.ndarray  # (n_reads, n_cells) read current (A) right after that cycle's RESET pulse
    set_pulses: int  # SET pulses applied in total (n_cycles * n_cells)
    reset_pulses: int  # RESET pulses applied in total
    read_ops: int  # read operations performed in total (2 * n_reads * n_cells)
    cycles_used: np.ndarray  # (n_cells,) wear counter of each cell after the call (full-cycle units)
    failed_at: np.ndarray  # (n_cells,) cycle (within this call) at which the cell wore out, -1 if it did not
    elapsed_s: float  # virtual time the call took


def _as_index(name: str, value, size: int) -> np.ndarray:
    """Validate a row/column index array against the array dimension."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size == 1 and value.dtype.kind in "iu":
        # one cell, as the firmware addresses it: the checks below without their per-call numpy overhead
        arr = value.astype(np.int64, copy=False)
        v = int(arr[0])
        if v < 0 or v >= size:
            raise ValueError(f"{name} index out of range [0, {size}): min {v}, max {v}")
        return arr
    arr = np.atleast_1d(np.asarray(value))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D integer index array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.equal(np.mod(arr, 1), 0).all():
            raise ValueError(f"{name} must contain integers")
        arr = arr.astype(np.int64)
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise ValueError(f"{name} index out of range [0, {size}): min {arr.min()}, max {arr.max()}")
    return arr


def _broadcast(name: str, value, n: int) -> np.ndarray:
    """Broadcast a scalar or per-cell operand to n cells, rejecting NaN/inf."""
    if isinstance(value, float | int):  # a Python (or numpy float64) scalar: the same numbers as below, faster
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return np.full(n, x)
    arr = np.asarray(value, dtype=float)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    try:
        return np.broadcast_to(arr, (n,)).astype(float)
    except ValueError:
        raise ValueError(f"{name} must be a scalar or have one value per cell ({n}), got shape {arr.shape}") from None


def exponential_field(z: np.ndarray, length_cells: float) -> np.ndarray:
    """Unit-variance field with Cov = exp(-(|dr| + |dc|) / length_cells) from white normals z (rows, cols).

    Exact, not approximate: an AR(1) filter along each row, then along each column (rho = exp(-1/length),
    innovation sd sqrt(1 - rho^2), started from the stationary law) turns iid N(0, 1) into the separable
    exponential covariance K_rows (x) K_cols. Elementwise arithmetic in a fixed order: no FFT or LAPACK.
    """
    if not (math.isfinite(length_cells) and length_cells > 0):
        raise ValueError(f"correlation length must be a positive number of cells, got {length_cells!r}")
    rho = math.exp(-1.0 / length_cells)
    innov = math.sqrt(-math.expm1(-2.0 / length_cells))  # sqrt(1 - rho^2) without cancellation at long lengths
    f = np.array(z, dtype=np.float64, copy=True)
    for j in range(1, f.shape[1]):
        f[:, j] = rho * f[:, j - 1] + innov * f[:, j]
    for i in range(1, f.shape[0]):
        f[i, :] = rho * f[i - 1, :] + innov * f[i, :]
    return f


def spatial_gain_field(rows: int, cols: int, params: DeviceParams, seed: int) -> np.ndarray:
    """The chip's spatially correlated ln gain s(r, c), (rows, cols); zeros when params.spatial_sigma is 0."""
    if params.spatial_sigma == 0.0:
        return np.zeros((rows, cols))
    z = site_normals(seed, rows, cols, Tag.SPATIAL_FIELD)
    return params.spatial_sigma * exponential_field(z, params.spatial_length_cells)


DEFAULT_PARAMS = DeviceParams()  # the default argument of RRAMArray (frozen, so shared)


class RRAMArray:
    """A rows x cols 1T1R HfO2 array with seeded device-to-device and cycle-to-cycle randomness."""

    def __init__(self, rows: int, cols: int, params: DeviceParams = DEFAULT_PARAMS, seed: int = 0) -> None:
        if int(rows) != rows or int(cols) != cols or rows < 1 or cols < 1:
            raise ValueError(f"array size must be positive integers, got rows={rows!r}, cols={cols!r}")
        if not isinstance(params, DeviceParams):
            raise ValueError(f"params must be a DeviceParams, got {type(params).__name__}")
        self.rows, self.cols, self.params, self.seed = int(rows), int(cols), params, int(seed)
        p, n = params, self.rows * self.cols
        self._clock_ns = 0  # the virtual clock, in whole nanoseconds (see the module doc)
        self._pulse_overhead_ns = int(round(p.pulse_overhead_s * 1e9))
        self.read_ns = int(round(p.read_overhead_s * 1e9))  # duration of one read
        d2d_ss, _ = np.random.SeedSequence(self.seed).spawn(2)  # (the second stream was the old sequential one)
        g = np.random.Generator(np.random.PCG64(d2d_ss))
        self.streams = CellStreams(self.seed, n)

        # --- device-to-device ground truth (drawn once, in a fixed order) ---
        u = g.random(n)
        self.stuck_start_lrs = u < p.stuck_lrs_frac
        self.stuck_start_hrs = (u >= p.stuck_lrs_frac) & (u < p.stuck_lrs_frac + p.stuck_hrs_frac)
        self.can_form = g.random(n) >= p.form_fail_frac
        self.v_form = p.v_form_mean + p.v_form_sd * g.standard_normal(n)
        self.g_pristine = p.g_pristine_median * np.exp(p.g_pristine_sigma * g.standard_normal(n))
        self.lrs_d2d = p.lrs_sigma_d2d * g.standard_normal(n)
        self.hrs_d2d = p.hrs_sigma_d2d * g.standard_normal(n)
        self.v_set_th = p.v_set_mean + p.v_set_sd * g.standard_normal(n)
        self.v_reset_th = p.v_reset_mean + p.v_reset_sd * g.standard_normal(n)
        self.cycles_to_failure = p.weibull_scale * g.weibull(p.weibull_shape, n)
        self.fail_mode_lrs = g.random(n) < p.fail_lrs_frac
        self.rtn_present = g.random(n) < p.rtn_cell_frac
        self.rtn_amp = np.where(
            self.rtn_present, p.rtn_amp_median * np.exp(p.rtn_amp_sigma * g.standard_normal(n)), 0.0
        )
        log_lo, log_hi = np.log(p.rtn_tau_min_s), np.log(p.rtn_tau_max_s)
        self.rtn_tau_empty = np.exp(g.uniform(log_lo, log_hi, n))  # mean dwell with the trap empty (s)
        self.rtn_tau_full = np.exp(g.uniform(log_lo, log_hi, n))  # mean dwell with the trap occupied (s)
        z_stuck = g.standard_normal(n)
        g_stuck = np.where(self.stuck_start_lrs, p.g_stuck_lrs_median, p.g_stuck_hrs_median) * np.exp(
            p.g_stuck_sigma * z_stuck
        )
        # spatially correlated ln gain on every LRS/HRS target (own stream; zeros, a no-op, when off)
        self.spatial_ln_gain = spatial_gain_field(self.rows, self.cols, p, self.seed).ravel()

        # --- dynamic state ---
        self.formed = np.zeros(n, dtype=bool)
        self.stuck_lrs = self.stuck_start_lrs.copy()
        self.stuck_hrs = self.stuck_start_hrs.copy()
        self.cycles_used = np.zeros(n)
        stuck = self.stuck_lrs | self.stuck_hrs
        self._g0 = np.where(stuck, g_stuck, self.g_pristine)
        self._t_prog = np.zeros(n)
        self._relax_on = np.zeros(n, dtype=bool)
        self._relax_z = np.zeros((n, _RELAX_NODES.size), dtype=np.float32)
        pi_full = self.rtn_tau_full / (self.rtn_tau_full + self.rtn_tau_empty)
        self._rtn_state = self.rtn_present & (g.random(n) < pi_full)
        self._rtn_t = np.zeros(n)
        self._events = np.zeros(n, dtype=np.uint64)  # operations each cell has seen: keys its random draws
        # The relaxation tables as `DeviceParams.relax_t0` / `relax_sigma` use them (same arrays, built once).
        self._relax_ln_g = np.log(np.asarray(p.relax_g_nodes_us, dtype=float))
        self._relax_ln_t0 = np.log(np.asarray(p.relax_t0_nodes_s, dtype=float))
        self._relax_sig_us = np.asarray(p.relax_sigma_nodes_us, dtype=float)
        self._relax_mu_zero = not any(p.relax_mu_coeffs_us)
        # t0 and sigma_r of the last programmed value each cell was read at (they are functions of it alone:
        # a cell whose value is the one stored reuses them; any other value is a miss). Not part of the state.
        self._rp_g0 = np.full(n, np.nan)
        self._rp_t0 = np.zeros(n)
        self._rp_sig = np.zeros(n)
        self._iv_at: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # I-V shape at a read voltage, and at v_read_ref
        # B(node_k) of each cell's relaxation path at the segment k it was last read in (k = -1: none). Every
        # writer of `_relax_z` calls `_paths_changed` for the cells it gives a new path. Not part of the state.
        self._below_k = np.full(n, -1, dtype=np.int8)
        self._below = np.zeros(n)

    # ------------------------------------------------------------------ persistent state
    # Everything that changes after construction; the device-to-device draws are rebuilt from the seed.
    _STATE_ARRAYS = (
        "formed",
        "stuck_lrs",
        "stuck_hrs",
        "cycles_used",
        "_g0",
        "_t_prog",
        "_relax_on",
        "_relax_z",
        "_rtn_state",
        "_rtn_t",
        "_events",
    )

    def export_state(self) -> dict[str, np.ndarray]:
        """Copies of every mutable per-cell array and the virtual clock (`clock_ns`, and `time_s` for people)."""
        state = {name: np.array(getattr(self, name), copy=True) for name in self._STATE_ARRAYS}
        state["clock_ns"] = np.array(self._clock_ns, dtype=np.int64)
        state["time_s"] = np.array(self.time_s)
        return state

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `export_state` gave (same seed, size and params); ValueError names a mismatch."""
        missing = [name for name in (*self._STATE_ARRAYS, "clock_ns") if name not in state]
        if missing:
            raise ValueError(f"chip state lacks {', '.join(missing)} (saved by an older simulator: reset the chip)")
        for name in self._STATE_ARRAYS:
            ours = getattr(self, name)
            value = np.asarray(state[name])
            if value.shape != ours.shape:
                raise ValueError(f"chip state {name} has shape {value.shape}, this chip needs {ours.shape}")
            setattr(self, name, np.ascontiguousarray(value, dtype=ours.dtype).copy())
        self._paths_changed(slice(None))
        clock = np.asarray(state["clock_ns"])
        if clock.shape != () or not np.issubdtype(clock.dtype, np.integer) or int(clock) < 0:
            raise ValueError(f"chip state clock_ns {clock!r} is not a valid clock reading")
        self._clock_ns = int(clock)

    # ------------------------------------------------------------------ addressing / clock
    def all_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) index arrays of every cell, row-major."""
        r, c = np.divmod(np.arange(self.rows * self.cols), self.cols)
        return r, c

    def _index(self, r, c) -> np.ndarray:
        """Flat cell indices of (r, c) index arrays."""
        rr = _as_index("rows", r, self.rows)
        cc = _as_index("cols", c, self.cols)
        if rr.shape != cc.shape:
            if rr.size == 1 or cc.size == 1:
                rr, cc = np.broadcast_arrays(rr, cc)
            else:
                raise ValueError(f"rows and cols must have equal length, got {rr.size} and {cc.size}")
        return rr * self.cols + cc

    def _unique_index(self, r, c, op: str) -> np.ndarray:
        """Flat indices for a state-changing op; a cell may appear only once per call."""
        idx = self._index(r, c)
        if idx.size > 1 and np.unique(idx).size != idx.size:
            raise ValueError(f"{op}: each cell may be addressed only once per call (duplicate (row, col) given)")
        return idx

    @property
    def clock_ns(self) -> int:
        """The virtual clock in nanoseconds (exact)."""
        return self._clock_ns

    @property
    def pulse_overhead_ns(self) -> int:
        """What a pulse costs on the clock beyond its width."""
        return self._pulse_overhead_ns

    @property
    def op_overhead_ns(self) -> int:
        """The board's per-operation cost of the duration rule (PROTOCOL.md 7.5): a read, or a pulse's overhead."""
        return max(self.read_ns, self._pulse_overhead_ns)

    def _check_clock(self, later_ns: int) -> int:
        """The clock `later_ns` from now, refused (nothing changed) if it would leave the signed 64-bit range."""
        t = self._clock_ns + int(later_ns)
        if t > CLOCK_LIMIT_NS:
            raise ValueError(
                f"the virtual clock ({self._clock_ns} ns) cannot advance by {int(later_ns)} ns: "
                f"its range ends at {CLOCK_LIMIT_NS} ns (about 292 years)"
            )
        return t

    @property
    def time_s(self) -> float:
        """The virtual clock in seconds."""
        return self._clock_ns * 1e-9

    def advance(self, seconds: float) -> None:
        """Advance the virtual clock (e.g. for retention bakes) without touching the cells; rounds to the ns."""
        if not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance() needs a non-negative finite number of seconds, got {seconds!r}")
        self._clock_ns = self._check_clock(int(round(float(seconds) * 1e9)))

    def advance_ns(self, nanoseconds: int) -> None:
        """Advance the virtual clock by a whole number of nanoseconds."""
        if int(nanoseconds) != nanoseconds or nanoseconds < 0:
            raise ValueError(f"advance_ns() needs a non-negative integer, got {nanoseconds!r}")
        self._clock_ns = self._check_clock(int(nanoseconds))

    def advance_to_ns(self, t_ns: int) -> None:
        """Move the clock forward to t_ns (after operations run at explicit times); never backwards."""
        if int(t_ns) != t_ns or t_ns < self._clock_ns:
            raise ValueError(f"advance_to_ns({t_ns!r}): the clock is at {self._clock_ns} ns and never goes back")
        self._clock_ns = self._check_clock(int(t_ns) - self._clock_ns)

    def pulse_ns(self, width_ns: float | np.ndarray) -> np.ndarray:
        """Duration (int ns) of pulses of these widths: the width rounded to the ns plus the pulse overhead."""
        return np.rint(np.asarray(width_ns, dtype=float)).astype(np.int64) + self._pulse_overhead_ns

    def _op_times(self, per_cell_ns: np.ndarray) -> np.ndarray:
        """Completion times (s) of each cell's operation when cells are served one after the other; advances the clock."""
        per = np.asarray(per_cell_ns, dtype=np.int64)
        if per.size and self._clock_ns + int(per.max()) * per.size > CLOCK_LIMIT_NS:  # the exact sum, only if near
            self._check_clock(sum(int(x) for x in per.ravel()))
        t = self._clock_ns + np.cumsum(per)
        if t.size:
            self._clock_ns = int(t[-1])
        return t.astype(np.float64) * 1e-9

    def _serial_times(self, n: int, each_ns: int) -> np.ndarray:
        """`_op_times` of n operations of each_ns ns each (clock + k * each_ns, exactly its running sum)."""
        if n and self._clock_ns + each_ns * n > CLOCK_LIMIT_NS:
            self._check_clock(each_ns * n)
        t = self._clock_ns + each_ns * np.arange(1, n + 1, dtype=np.int64)
        self._clock_ns += each_ns * n
        return t.astype(np.float64) * 1e-9

    def _explicit_times(self, at_ns, n: int, op: str) -> np.ndarray:
        """Validated explicit completion times (s) for n cells: integers (ns), one per cell, not in the past."""
        t = np.atleast_1d(np.asarray(at_ns))
        if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"{op}: at_ns must be {n} integer nanosecond times, got {t.dtype} of shape {t.shape}")
        if n and int(t.min()) < self._clock_ns:
            raise ValueError(f"{op}: at_ns {int(t.min())} lies before the clock ({self._clock_ns} ns)")
        return t.astype(np.int64).astype(np.float64) * 1e-9

    def _take_events(self, idx: np.ndarray, unique: bool = False) -> np.ndarray:
        """Each addressed cell's event counter before this operation (then counted); repeats of a cell count on.

        unique: the caller already checked that no cell repeats (pulse ops), so the check is skipped.
        """
        ev = self._events[idx]
        if idx.size > 1 and not unique and np.count_nonzero(idx[1:] <= idx[:-1]):  # increasing: all distinct
            order = np.argsort(idx, kind="stable")
            s = idx[order]
            first = np.ones(idx.size, dtype=bool)
            first[1:] = s[1:] != s[:-1]
            if not first.all():  # a cell listed k times takes k successive counter values, in call order
                pos = np.arange(idx.size)
                rank = np.empty(idx.size, dtype=np.uint64)
                rank[order] = pos - np.maximum.accumulate(np.where(first, pos, 0))
                ev = ev + rank
                np.add.at(self._events, idx, np.uint64(1))
                return ev
        self._events[idx] += np.uint64(1)
        return ev

    def _event_keys(self, idx: np.ndarray, unique: bool = False) -> np.ndarray:
        """Random-stream keys of one operation on cells idx (counts the operation); unique as in `_take_events`."""
        return self.streams.event_keys(idx, self._take_events(idx, unique))

    # ------------------------------------------------------------------ conductance
    def _g_at(self, idx: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Noiseless conductance of cells idx at times t (programmed value plus relaxation path).

        A call with no relaxing cell returns the programmed values as they are; otherwise every value is
        floored at g_floor (as the first implementation did, `reference_ops.ReferenceArray._g_at`).
        """
        g0 = self._g0[idx]
        on = self._relax_on[idx]
        n_on = np.count_nonzero(on)
        if not n_on:
            return g0
        if n_on == on.size:
            return self._relaxed(idx, t, g0, self._cached_relax_params(idx, g0))
        g = np.maximum(g0, self.params.g_floor)
        sel = on.nonzero()[0]
        g[sel] = self._relaxed(idx[sel], t[sel], g0[sel], self._cached_relax_params(idx[sel], g0[sel]))
        return g

    def _cached_relax_params(self, idx: np.ndarray, g0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`_relax_params` of cells idx at their programmed values g0, from the cache where it holds g0."""
        hit = self._rp_g0[idx] == g0
        n_hit = np.count_nonzero(hit)
        if n_hit == idx.size:
            return self._rp_t0[idx], self._rp_sig[idx]
        if n_hit:
            t0, sig = self._rp_t0[idx], self._rp_sig[idx]
            miss = (~hit).nonzero()[0]
            t0[miss], sig[miss] = self._relax_params(g0[miss])
        else:
            t0, sig = self._relax_params(g0)
        self._remember_relax_params(idx, g0, t0, sig)
        return t0, sig

    def _remember_relax_params(self, idx: np.ndarray, g0: np.ndarray, t0: np.ndarray, sig: np.ndarray) -> None:
        self._rp_g0[idx] = g0
        self._rp_t0[idx] = t0
        self._rp_sig[idx] = sig

    def _relax_params(self, g0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(t0, sigma_r) of cells programmed to g0: `DeviceParams.relax_t0` and `relax_sigma`, one log shared."""
        p = self.params
        x = np.log(np.maximum(g0, p.g_floor) * 1e6)
        t0 = np.exp(np.interp(x, self._relax_ln_g, self._relax_ln_t0))
        sig = np.maximum(1e-6 * np.interp(x, self._relax_ln_g, self._relax_sig_us), 0.0) * np.minimum(1.0, g0 / p.g_min)
        return t0, sig

    def _paths_changed(self, idx: np.ndarray | slice) -> None:
        """Cells idx got new relaxation paths: forget what `_path_below` remembers of their old ones."""
        self._below_k[idx] = -1

    def _path_below(self, idx: np.ndarray, k: np.ndarray) -> np.ndarray:
        """B(node_k) of cells idx, k >= 1, remembered from the cell's last read in the same segment."""
        hit = self._below_k[idx] == k
        n_hit = np.count_nonzero(hit)
        if n_hit == k.size:
            return self._below[idx]
        if n_hit:
            below = self._below[idx]
            miss = (~hit).nonzero()[0]
            below[miss] = self._path_sums(idx[miss], k[miss])
        else:
            below = self._path_sums(idx, k)
        self._below_k[idx] = k
        self._below[idx] = below
        return below

    def _path_sums(self, idx: np.ndarray, k: np.ndarray) -> np.ndarray:
        """B(node_k) of cells idx, k >= 1: z_0 sqrt(w_0) + z_1 sqrt(w_1) + ... in node order, as a running sum."""
        width = int(k.max())
        if k.size * width < 2048:
            z = self._relax_z[idx, :width].astype(np.float64)
            return np.cumsum(z * _RELAX_SQRT_WIDTHS[:width], axis=1)[np.arange(k.size), k - 1]
        part = self._relax_z[idx, :width].T.astype(np.float64)  # nodes by cells: each running-sum step is one add
        part *= _RELAX_SQRT_WIDTHS[:width, None]
        for j in range(1, width):
            part[j] += part[j - 1]
        return part.ravel()[(k - 1) * k.size + np.arange(k.size)]

    def _relax_clock(self, idx: np.ndarray, t: np.ndarray, t0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(L, k) of relaxing cells at times t: L = log10(1 + dt / t0), k the path segment holding L."""
        L = np.log10(1.0 + np.maximum(t - self._t_prog[idx], 0.0) / t0)
        return L, _RELAX_NODES.searchsorted(L, side="right") - 1

    def _relaxed(
        self,
        idx: np.ndarray,
        t: np.ndarray,
        g0: np.ndarray,
        params: tuple[np.ndarray, np.ndarray] | None = None,
        clock: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Conductance at times t of relaxing cells idx programmed to g0, floored (params, clock: precomputed).

        G = g0 + mu(g0) L + sigma_r(g0) B(L) with B(L) = B(node_k) + z_k sqrt(L - node_k), the terms added in
        that order; B at the nodes is the running sum of z_j sqrt(width_j) in node order (sequential, per cell).
        """
        t0, sig = self._relax_params(g0) if params is None else params
        L, k = self._relax_clock(idx, t, t0) if clock is None else clock
        step = self._relax_z.ravel()[idx * _RELAX_NODES.size + k].astype(np.float64) * np.sqrt(L - _RELAX_NODES[k])
        deep = k.nonzero()[0]  # k >= 0: the cells past the first node
        if deep.size == k.size:
            brown = self._path_below(idx, k) + step
        elif deep.size:
            below = np.zeros(L.size)
            below[deep] = self._path_below(idx[deep], k[deep])
            brown = below + step
        else:
            brown = 0.0 + step  # B(node_0) = 0 added, as for the others
        term = sig * brown
        term = 0.0 + term if self._relax_mu_zero else self.params.relax_mu(g0) * L + term
        return np.maximum(g0 + term, self.params.g_floor)

    def conductance(self, r, c, at_ns=None) -> np.ndarray:
        """Noiseless conductance (S) now (or at integer-ns times at_ns), including relaxation; for tests and
        ground truth (no clock cost, no randomness used)."""
        idx = self._index(r, c)
        if at_ns is None:
            return self._g_at(idx, np.full(idx.size, self.time_s))
        t = np.broadcast_to(np.asarray(at_ns), idx.shape)
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"conductance: at_ns must be integer nanoseconds, got {t.dtype}")
        return self._g_at(idx, t.astype(np.int64).astype(np.float64) * 1e-9)

    def _reprogram(
        self, idx: np.ndarray, g_before: np.ndarray, g_after: np.ndarray, t: np.ndarray, keys: np.ndarray
    ) -> None:
        """Store new conductances: real moves restart the relaxation clock (new path drawn), disturbs just shift it."""
        p = self.params
        moved = np.abs(g_after - g_before) > p.relax_restart_frac * p.g_max
        healthy = self.formed[idx] & ~(self.stuck_lrs[idx] | self.stuck_hrs[idx])
        restart = moved & healthy
        ri = idx[restart]
        self._g0[ri] = g_after[restart]
        self._t_prog[ri] = t[restart]
        self._relax_on[ri] = True
        if ri.size:
            z = self.streams.normal(keys[restart][:, None], Tag.RELAX_PATH, _RELAX_DRAWS)
            self._relax_z[ri] = z.astype(np.float32)
            self._paths_changed(ri)
        relaxing = self._relax_on[idx]
        shift = ~restart & relaxing
        self._g0[idx[shift]] += g_after[shift] - g_before[shift]
        direct = ~restart & ~relaxing
        self._g0[idx[direct]] = g_after[direct]

    # ------------------------------------------------------------------ I-V
    def _iv_shape(self, x: np.ndarray) -> np.ndarray:
        """S(V) = sinh(V / v_nl) / (V / v_nl), 1 near 0: the I-V nonlinearity relative to a linear resistor."""
        y = np.asarray(x, dtype=float) / self.params.v_nl
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(np.abs(y) < 1e-8, 1.0, np.sinh(y) / np.where(y == 0, 1.0, y))

    def _iv(self, g: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Cell current (A) at voltage v for conductance g defined at v_read_ref (sinh nonlinearity)."""
        if v.size == 1:  # one voltage (a single cell's pulse): its two shapes from `_iv_shapes`, the same numbers
            s_v, s_ref = self._iv_shapes(float(v.flat[0]))
            return g * v * s_v / s_ref
        return g * v * self._iv_shape(v) / self._iv_shape(np.asarray(self.params.v_read_ref))

    # ------------------------------------------------------------------ switching core
    def _kinetics(self, v_abs, width_ns, v_th, keys: np.ndarray) -> np.ndarray:
        """Stochastic switched fraction f = 1 - exp(-xi * width / tau(V))."""
        p = self.params
        xi = np.exp(p.step_sigma * self.streams.normal(keys, Tag.KINETICS))
        return -np.expm1(-xi * width_ns / p.tau_ns(v_abs, v_th))

    def _mean_fraction(self, rate: np.ndarray) -> np.ndarray:
        """E[1 - exp(-xi * rate)] over ln xi ~ N(0, step_sigma^2) (Gauss-Hermite, 16 nodes, summed in order)."""
        rate = np.asarray(rate, dtype=float)
        out = np.zeros(rate.shape)
        for x, w in zip(_GH_NODES, _GH_WEIGHTS):
            out += w * -np.expm1(-rate * float(np.exp(self.params.step_sigma * x)))
        return out

    def _ln_lrs_target(self, idx, v_gate, cycles) -> np.ndarray:
        """Median ln G of the LRS this cell would reach after a full SET (incl. d2d offset and wear)."""
        return (
            np.log(self.params.g_lrs(v_gate))
            + (self.lrs_d2d[idx] + self.spatial_ln_gain[idx])
            + self.params.wear_shift(cycles)[0]
        )

    def _ln_hrs_target(self, idx, v_abs, cycles) -> np.ndarray:
        """Median ln G of the HRS this cell would reach after a full RESET (incl. d2d offset and wear)."""
        return (
            np.log(self.params.g_hrs(v_abs))
            + (self.hrs_d2d[idx] + self.spatial_ln_gain[idx])
            + self.params.wear_shift(cycles)[1]
        )

    def _pulse(
        self,
        idx: np.ndarray,
        v: np.ndarray,
        width_ns: np.ndarray,
        v_gate: np.ndarray,
        t: np.ndarray,
        keys: np.ndarray,
        allow_form: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply one pulse (sign of v picks SET/FORM or RESET) to each cell at times t; returns (G before, G after).

        keys: the random-stream key of this pulse for each cell (from `_event_keys`).
        """
        p = self.params
        n = idx.size
        g_before = self._g_at(idx, t)
        lng = np.log(np.maximum(g_before, p.g_floor))
        new = lng.copy()
        stuck = self.stuck_lrs[idx] | self.stuck_hrs[idx]
        formed = self.formed[idx]
        healthy = formed & ~stuck
        pos = v > 0
        neg = v < 0
        v_abs = np.abs(v)

        # FORM: pristine cells whose forming threshold (shifted by pulse width) is reached.
        if allow_form:
            v_form_eff = self._v_form_eff(idx, width_ns)
            forming = pos & ~formed & ~stuck & self.can_form[idx] & (v >= v_form_eff)
            if forming.any():
                fi = idx[forming]
                z = self.streams.normal(keys[forming], Tag.FORM_C2C)
                new[forming] = self._ln_lrs_target(fi, v_gate[forming], self.cycles_used[fi]) + p.lrs_sigma_c2c * z
                self.formed[fi] = True

        f = np.zeros(n)
        sw = healthy & (pos | neg)
        if sw.any():
            si = idx[sw]
            vth = np.where(pos[sw], self.v_set_th[si], self.v_reset_th[si])
            f_sw = self._kinetics(v_abs[sw], width_ns[sw], vth, keys[sw])
            z = self.streams.normal(keys[sw], Tag.TARGET_C2C)
            cyc = self.cycles_used[si]
            up = pos[sw]
            ln_t = np.where(
                up,
                self._ln_lrs_target(si, v_gate[sw], cyc) + p.lrs_sigma_c2c * z,
                self._ln_hrs_target(si, v_abs[sw], cyc) + p.hrs_sigma_c2c * z,
            )
            delta = np.where(up, np.maximum(ln_t - lng[sw], 0.0), np.minimum(ln_t - lng[sw], 0.0))
            new[sw] = lng[sw] + f_sw * delta
            f[sw] = np.where(delta != 0.0, f_sw, 0.0)

        g_after = np.where(stuck | (~formed & ~self.formed[idx]), g_before, np.exp(new))
        # Wear: a full SET plus a full RESET is one cycle; cells reaching their cycles-to-failure stick.
        if sw.any():
            before = self.cycles_used[idx]
            after = before + 0.5 * f
            self.cycles_used[idx] = after
            dying = sw & (before < self.cycles_to_failure[idx]) & (after >= self.cycles_to_failure[idx])
            if dying.any():
                di = idx[dying]
                mode_lrs = self.fail_mode_lrs[di]
                g_after[dying] = np.where(
                    mode_lrs, np.maximum(g_before[dying], g_after[dying]), np.minimum(g_before[dying], g_after[dying])
                )
                self.stuck_lrs[di] = mode_lrs
                self.stuck_hrs[di] = ~mode_lrs
                self._relax_on[di] = False
        self._reprogram(idx, g_before, g_after, t, keys)
        return g_before, g_after

    def _v_form_eff(self, idx: np.ndarray, width_ns: np.ndarray) -> np.ndarray:
        """Forming voltage of cells idx for pulses of these widths (shifted by the width's decades)."""
        p = self.params
        return self.v_form[idx] - p.v_form_per_decade * np.log10(width_ns / p.v_form_width_ref_ns)

    def _pulse_op(
        self, r, c, v, width_ns, v_gate, op: str, at_ns=None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validate a pulse op, time-stamp it and apply it; returns (idx, v, v_gate, G before, G after)."""
        idx = self._unique_index(r, c, op)
        n = idx.size
        v = _broadcast(f"{op} voltage", v, n)
        width = _broadcast(f"{op} width_ns", width_ns, n)
        gate = _broadcast(f"{op} v_gate", v_gate, n)
        if (width <= 0).any():
            raise ValueError(f"{op}: width_ns must be positive, got {width_ns!r}")
        if op == "reset_pulse" and (v > 0).any():
            raise ValueError(f"reset_pulse: RESET is bipolar, give a negative voltage (got {np.max(v)} V)")
        if op != "reset_pulse" and (v < 0).any():
            raise ValueError(f"{op}: voltage must be >= 0 (use reset_pulse for negative pulses), got {np.min(v)} V")
        t = self._op_times(self.pulse_ns(width)) if at_ns is None else self._explicit_times(at_ns, n, op)
        g_before, g_after = self._pulse(idx, v, width, gate, t, self._event_keys(idx, unique=True))
        return idx, v, gate, g_before, g_after

    def _pulse_current(self, g: np.ndarray, v: np.ndarray, v_gate: np.ndarray) -> np.ndarray:
        """Current during a pulse, limited in magnitude by the access transistor's compliance."""
        i = self._iv(g, v)
        return np.sign(i) * np.minimum(np.abs(i), self.params.i_cc(v_gate))

    # ------------------------------------------------------------------ public pulse API
    def form(
        self, r, c, v_form: float | np.ndarray, width_ns: float | np.ndarray, v_gate: float | np.ndarray
    ) -> np.ndarray:
        """FORM pulse: forms pristine cells whose forming voltage is reached; returns peak current (A)."""
        _, v, gate, _, g_after = self._pulse_op(r, c, v_form, width_ns, v_gate, "form")
        return self._pulse_current(g_after, v, gate)

    def pristine_steps(
        self, r: int, c: int, volts: np.ndarray, width_ns: float, v_gate: float, v_read: float
    ) -> PristineSteps | None:
        """The leading FORM pulses of a ramp (volts, V) that leave cell (r, c) pristine, each followed by a read at
        v_read, computed at once and not yet applied (`apply_pristine_steps`); None when the cell is formed or
        relaxing, or the steps would run past the clock's range.

        Below its forming voltage a FORM pulse changes nothing on a pristine cell but the clock and the cell's
        event counter, and its read moves only the trap: so pulse k and its read take the events, times, random
        numbers and trap state the separate `form` and `read_current` calls give them, and the same currents.
        """
        idx = self._index(np.array([r]), np.array([c]))
        i = int(idx[0])
        if self.formed[i] or self._relax_on[i]:
            return None
        v = np.asarray(volts, dtype=float)
        width = np.full(1, float(width_ns))
        can_form = self.can_form[i] and not (self.stuck_lrs[i] or self.stuck_hrs[i])
        forms = (v > 0) & (v >= self._v_form_eff(idx, width)) if can_form else np.zeros(v.size, dtype=bool)
        stop = (forms | (v < 0)).nonzero()[0]  # a forming pulse (or a refused voltage) ends the shortcut
        k = int(stop[0]) if stop.size else v.size
        pulse_ns = int(self.pulse_ns(width)[0])
        step_ns = pulse_ns + self.read_ns
        if k == 0 or self._clock_ns + k * step_ns > CLOCK_LIMIT_NS:
            return None
        v = v[:k]
        start = self._clock_ns + step_ns * np.arange(k, dtype=np.int64)  # each pulse's start (`_op_times`)
        t_read = (start + step_ns).astype(np.float64) * 1e-9  # `_serial_times` of each read
        events = self._events[i] + np.uint64(2) * np.arange(k, dtype=np.uint64)  # pulse k's; its read takes +1
        u = uniforms_at(self.streams.event_keys(np.full(k, i), events + np.uint64(1))[:, None], _READ_OFFSETS)
        g0 = self._g0[idx]  # `_g_at` of a cell that does not relax
        occupied = np.zeros(k, dtype=bool)
        if self.rtn_present[i]:  # `_rtn_update`, read after read
            rate_in, rate_out = 1.0 / self.rtn_tau_empty[idx], 1.0 / self.rtn_tau_full[idx]
            pi_full = rate_in / (rate_in + rate_out)
            before = np.concatenate([self._rtn_t[idx], t_read[:-1]])
            decay = np.exp(-(rate_in + rate_out) * np.maximum(t_read - before, 0.0))
            state, pi = bool(self._rtn_state[i]), float(pi_full[0])
            for j in range(k):
                state = bool(u[j, 0] < pi + (float(state) - pi) * float(decay[j]))
                occupied[j] = state
        read = self._trap_read(idx, g0, occupied, np.array([float(v_read)]), ndtri(u[:, 1]))
        pulse = self._pulse_current(np.full(k, g0[0]), v, np.full(k, float(v_gate)))
        return PristineSteps(i, pulse, read, occupied, t_read, step_ns)

    def apply_pristine_steps(self, steps: PristineSteps, n: int) -> None:
        """Apply the first n of `pristine_steps`: the clock, the cell's event counter and its trap move as the n
        separate pulses and reads move them."""
        if not 0 <= n <= steps.read_current.size:
            raise ValueError(f"apply_pristine_steps: 0 to {steps.read_current.size} steps, not {n}")
        if n:
            i = steps.cell
            self._clock_ns = self._check_clock(n * steps.step_ns)
            self._events[i] += np.uint64(2 * n)
            self._rtn_state[i] = steps.occupied[n - 1]
            self._rtn_t[i] = steps.t_read[n - 1]

    def set_pulse(
        self, r, c, v: float | np.ndarray, width_ns: float | np.ndarray, v_gate: float | np.ndarray, at_ns=None
    ) -> np.ndarray:
        """SET pulse (v >= 0): moves G up toward G_LRS(I_cc(v_gate)), partially for weak/short pulses; returns peak current (A).

        at_ns: explicit completion times (integer ns, one per cell, not before the clock) instead of
        serving the cells one after the other; the clock is then left alone (see `advance_to_ns`).
        """
        _, v, gate, _, g_after = self._pulse_op(r, c, v, width_ns, v_gate, "set_pulse", at_ns)
        return self._pulse_current(g_after, v, gate)

    def reset_pulse(
        self, r, c, v: float | np.ndarray, width_ns: float | np.ndarray, v_gate: float | np.ndarray, at_ns=None
    ) -> np.ndarray:
        """RESET pulse (v <= 0, bipolar): moves G down toward G_HRS(|v|); returns peak (negative) current (A); at_ns as in `set_pulse`."""
        _, v, gate, g_before, _ = self._pulse_op(r, c, v, width_ns, v_gate, "reset_pulse", at_ns)
        return self._pulse_current(g_before, v, gate)

    def iv_sweep(self, r, c, voltages: np.ndarray, width_ns: float, v_gate: float | np.ndarray) -> np.ndarray:
        """Staircase sweep: each step is a pulse (SET/FORM for V>0, RESET for V<0); returns (n_steps, n_cells) currents (A)."""
        idx = self._unique_index(r, c, "iv_sweep")
        volts = np.atleast_1d(np.asarray(voltages, dtype=float))
        if volts.ndim != 1 or volts.size == 0 or not np.isfinite(volts).all():
            raise ValueError("iv_sweep: voltages must be a non-empty 1-D array of finite values")
        n = idx.size
        width = _broadcast("iv_sweep width_ns", width_ns, n)
        if (width <= 0).any():
            raise ValueError(f"iv_sweep: width_ns must be positive, got {width_ns!r}")
        gate = _broadcast("iv_sweep v_gate", v_gate, n)
        out = np.empty((volts.size, n))
        step_ns = self.pulse_ns(width)
        for k, vk in enumerate(volts):
            v = np.full(n, vk)
            t = self._op_times(step_ns)
            _, g_after = self._pulse(idx, v, width, gate, t, self._event_keys(idx, unique=True))
            out[k] = self._pulse_current(g_after, v, gate)
        return out

    # ------------------------------------------------------------------ read
    def _rtn_update(self, idx: np.ndarray, t: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Advance each cell's two-state trap to times t (exact Markov transition, uniforms u); returns occupancy."""
        state = np.zeros(idx.size, dtype=bool)
        pres = self.rtn_present[idx]
        if pres.any():
            pi_ = idx[pres]
            rate_in = 1.0 / self.rtn_tau_empty[pi_]
            rate_out = 1.0 / self.rtn_tau_full[pi_]
            pi_full = rate_in / (rate_in + rate_out)
            decay = np.exp(-(rate_in + rate_out) * np.maximum(t[pres] - self._rtn_t[pi_], 0.0))
            p_full = pi_full + (self._rtn_state[pi_] - pi_full) * decay
            state[pres] = u[pres] < p_full
        self._rtn_state[idx] = state
        self._rtn_t[idx] = t
        return state

    def read_current(self, r, c, v_read: float | np.ndarray, at_ns=None) -> np.ndarray:
        """Read current (A) at v_read now: I(G) with RTN and white read noise (1% of g_max * v_read); at_ns as in `set_pulse`."""
        idx = self._index(r, c)
        if np.ndim(v_read) == 0:  # one voltage for all: the I-V shape is evaluated once
            v = np.array([float(v_read)])
            if not math.isfinite(v[0]):
                raise ValueError(f"v_read must be finite, got {v_read!r}")
        else:
            v = _broadcast("v_read", v_read, idx.size)
        if at_ns is None:
            t = self._serial_times(idx.size, self.read_ns)
        else:
            t = self._explicit_times(at_ns, idx.size, "read_current")
        u = uniforms_at(self._event_keys(idx)[:, None], _READ_OFFSETS)
        g = self._g_at(idx, t)
        return self._noisy_read(idx, t, g, v, u[:, 0], ndtri(u[:, 1]))

    def _noisy_read(
        self, idx: np.ndarray, t: np.ndarray, g: np.ndarray, v: np.ndarray, u_rtn: np.ndarray, z_noise: np.ndarray
    ) -> np.ndarray:
        """Read currents of cells idx of conductance g at times t: trap (uniforms u_rtn), I-V, white noise z_noise.

        v: one voltage per cell, or one for all (shape (1,)).
        """
        return self._trap_read(idx, g, self._rtn_update(idx, t, u_rtn), v, z_noise)

    def _trap_read(
        self, idx: np.ndarray, g: np.ndarray, occupied: np.ndarray, v: np.ndarray, z_noise: np.ndarray
    ) -> np.ndarray:
        """Read currents of cells idx of conductance g, their traps `occupied`: the trap's share off, the I-V at v
        (one voltage per cell, or one for all), white noise z_noise."""
        g_eff = g * (1.0 - self.rtn_amp[idx] * occupied)
        noise = self.params.read_noise_frac * self.params.g_max * np.abs(v) * z_noise
        return self._iv(g_eff, v) + noise

    def _iv_shapes(self, v: float) -> tuple[np.ndarray, np.ndarray]:
        """(S(v), S(v_read_ref)) of `_iv` for one voltage, computed once per voltage."""
        shapes = self._iv_at.get(v)
        if shapes is None:
            shapes = (self._iv_shape(np.array([v])), self._iv_shape(np.asarray(self.params.v_read_ref)))
            if len(self._iv_at) < _IV_CACHE_MAX:  # pulse voltages can be many: the cache stays small
                self._iv_at[v] = shapes
        return shapes

    def verify_batch(self, r, c, first_read_ns: np.ndarray, ramps: VerifyRamps) -> VerifyBatch:
        """The formed, distinct cells of one write-verify request, for its fused pulse + verify-read rounds."""
        return VerifyBatch(self, self._unique_index(r, c, "verify_batch"), first_read_ns, ramps)

    # ------------------------------------------------------------------ endurance
    def cycle(
        self,
        r,
        c,
        n_cycles: int,
        read_every: int,
        set_v: float,
        set_width_ns: float,
        set_gate: float,
        reset_v: float,
        reset_width_ns: float,
        reset_gate: float,
        v_read: float,
    ) -> CycleResult:
        """Simulate n SET/RESET cycles per cell with reads every k-th cycle, in closed form (no per-cycle loop).

        Wear between reads only depends on the cycle count, so each read point is drawn directly: the
        targets at that wear level, then the SET and RESET of the read cycle (plus three warm-up cycles
        when the pulses switch only partially).  Reads are taken right after each pulse (no relaxation),
        with white + RTN read noise; the firmware quantizes them with its ReadChain.  reset_gate only
        caps pulse currents, which this call does not report.  Cells are cycled one after the other
        on the virtual clock.  Random draws are keyed by cell, this call's event and the read point, so
        a cell's numbers never depend on the other cells of the call or on internal chunking.
        """
        p = self.params
        idx = self._unique_index(r, c, "cycle")
        if int(n_cycles) != n_cycles or n_cycles < 1:
            raise ValueError(f"cycle: n_cycles must be a positive integer, got {n_cycles!r}")
        if int(read_every) != read_every or read_every < 1:
            raise ValueError(f"cycle: read_every must be a positive integer, got {read_every!r}")
        n_cycles, read_every = int(n_cycles), int(read_every)
        for name, val in (
            ("set_v", set_v),
            ("set_width_ns", set_width_ns),
            ("set_gate", set_gate),
            ("reset_v", reset_v),
            ("reset_width_ns", reset_width_ns),
            ("reset_gate", reset_gate),
            ("v_read", v_read),
        ):
            if np.ndim(val) != 0 or not np.isfinite(val):
                raise ValueError(f"cycle: {name} must be a finite scalar, got {val!r}")
        if set_v < 0 or reset_v > 0:
            raise ValueError(f"cycle: need set_v >= 0 and reset_v <= 0 (bipolar), got {set_v} and {reset_v}")
        if set_width_ns <= 0 or reset_width_ns <= 0:
            raise ValueError("cycle: pulse widths must be positive")
        m = idx.size
        t_start_ns = self._clock_ns
        per_cell_ns = n_cycles * (int(self.pulse_ns(set_width_ns)) + int(self.pulse_ns(reset_width_ns)))
        per_cell_ns += 2 * (n_cycles // read_every) * self.read_ns
        self._check_clock(m * per_cell_ns)  # before anything changes
        keys = self._event_keys(idx, unique=True)  # the whole call is one event per cell; draws by read point

        # A SET pulse at forming strength forms pristine cells on the first cycle.
        v_form_eff = self.v_form[idx] - p.v_form_per_decade * np.log10(set_width_ns / p.v_form_width_ref_ns)
        stuck0 = self.stuck_lrs[idx] | self.stuck_hrs[idx]
        newly = ~self.formed[idx] & ~stuck0 & self.can_form[idx] & (set_v >= v_form_eff)
        self.formed[idx[newly]] = True
        healthy = self.formed[idx] & ~stuck0

        # Expected switched fractions (averaged over the rate noise) set the wear per cycle.
        tau_set = p.tau_ns(set_v, self.v_set_th[idx])
        tau_rst = p.tau_ns(abs(reset_v), self.v_reset_th[idx])
        f_set = self._mean_fraction(set_width_ns / tau_set)
        f_rst = self._mean_fraction(reset_width_ns / tau_rst)
        wear_per_cycle = np.where(healthy, 0.5 * (f_set + f_rst), 0.0)
        n0 = self.cycles_used[idx]
        n_fail = self.cycles_to_failure[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            k_fail = np.where(wear_per_cycle > 0, np.ceil((n_fail - n0) / wear_per_cycle), np.inf)
        fails = healthy & (n0 < n_fail) & (k_fail <= n_cycles)
        k_fail = np.where(fails, np.maximum(k_fail, 1), np.inf)

        # Three warm-up cycles before each read erase the memory of the closed-form start point (so
        # reads have the right marginal statistics; for partial pulses successive reads are then
        # independent rather than correlated).  A cell whose pulses switch fully (memory < 1e-6 per
        # cycle even at a -4 sigma rate) needs none.  Decided per cell, so batch mates never matter.
        xi_lo = np.exp(-4 * p.step_sigma)
        mem = np.exp(-xi_lo * set_width_ns / tau_set) + np.exp(-xi_lo * reset_width_ns / tau_rst)
        n_warm = np.where(healthy & (mem >= 1e-6), _N_WARM, 0)
        w_max = int(n_warm.max()) if m else 0
        first_round = w_max - n_warm  # the loop round in which each cell's own first cycle runs

        n_reads = n_cycles // read_every
        read_cycles = read_every * np.arange(1, n_reads + 1)
        points = read_cycles if (n_reads and read_cycles[-1] == n_cycles) else np.append(read_cycles, n_cycles)

        g_start = self._g_at(idx, np.full(m, self.time_s))
        ln_start = np.log(np.maximum(g_start, p.g_floor))
        ln_g_lrs_gate = float(np.log(p.g_lrs(set_gate)))
        ln_g_hrs_v = float(np.log(p.g_hrs(reset_v)))
        i_scale = self._iv(np.ones(1), np.array([v_read]))[0]  # I per siemens at v_read
        noise_sd = p.read_noise_frac * p.g_max * abs(v_read)
        rtn = self.rtn_present[idx]
        pi_full = self.rtn_tau_full[idx] / (self.rtn_tau_full[idx] + self.rtn_tau_empty[idx])

        # Each cell's own ln offsets of the LRS and HRS targets: independent d2d plus the spatial gain.
        lrs_d2d = self.lrs_d2d[idx] + self.spatial_ln_gain[idx]
        hrs_d2d = self.hrs_d2d[idx] + self.spatial_ln_gain[idx]
        # Value a worn-out cell freezes at: its last LRS (stuck-LRS mode) or HRS at failure wear.
        z_f = self.streams.normal(keys, Tag.CYCLE_FAIL)
        wl_f, wh_f = p.wear_shift(n_fail)
        ln_fail = np.where(
            self.fail_mode_lrs[idx],
            ln_g_lrs_gate + lrs_d2d + wl_f + p.lrs_sigma_c2c * z_f,
            ln_g_hrs_v + hrs_d2d + wh_f + p.hrs_sigma_c2c * z_f,
        )
        g_frozen = np.where(fails, np.exp(ln_fail), g_start)  # non-healthy cells keep their value

        lrs_out = np.empty((n_reads, m))
        hrs_out = np.empty((n_reads, m))
        final_hrs = np.empty(m)
        k_row = keys[None, :]
        chunk = max(1, _MAX_CHUNK_ELEMENTS // max(m, 1))
        for start in range(0, points.size, chunk):
            pc = points[start : start + chunk]
            q = pc.size
            point_no = np.arange(start, start + q, dtype=np.uint64)[:, None]  # read point within this call
            wear = n0[None, :] + pc[:, None] * wear_per_cycle[None, :]
            wl, wh = p.wear_shift(wear)
            a = ln_g_lrs_gate + lrs_d2d[None, :] + wl
            b = ln_g_hrs_v + hrs_d2d[None, :] + wh
            # Closed-form start: the noise-free fixed point of the alternating partial map (HRS side).
            denom = 1.0 - (1.0 - f_set) * (1.0 - f_rst)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_fp = np.where(denom > 1e-9, ((1.0 - f_rst) * f_set * a + f_rst * b) / denom, ln_start[None, :])
            x = np.broadcast_to(x_fp, (q, m)).copy()
            if start == 0:
                x[0] = ln_start  # the first read's chain starts from the cells' real state
            x_lrs = x
            for rnd in range(w_max + 1):
                own = rnd - first_round  # each cell's own cycle number before this read (its last is the read)
                on = own >= 0
                draw = point_no * np.uint64(_N_WARM + 1) + np.maximum(own, 0).astype(np.uint64)[None, :]
                rate_s = np.exp(p.step_sigma * self.streams.normal(k_row, Tag.CYCLE_SET_RATE, draw)) * set_width_ns
                fs = -np.expm1(-rate_s / tau_set[None, :])
                ts = a + p.lrs_sigma_c2c * self.streams.normal(k_row, Tag.CYCLE_SET_TARGET, draw)
                xs = x + fs * np.maximum(ts - x, 0.0)
                rate_r = np.exp(p.step_sigma * self.streams.normal(k_row, Tag.CYCLE_RESET_RATE, draw)) * reset_width_ns
                fr = -np.expm1(-rate_r / tau_rst[None, :])
                tr = b + p.hrs_sigma_c2c * self.streams.normal(k_row, Tag.CYCLE_RESET_TARGET, draw)
                xr = xs + fr * np.minimum(tr - xs, 0.0)
                if rnd < w_max:
                    x = np.where(on[None, :], xr, x)
                else:
                    x_lrs, x = xs, xr
            g_l, g_h = np.exp(x_lrs), np.exp(x)
            dead = ~healthy[None, :] | (pc[:, None] >= k_fail[None, :])
            g_l = np.where(dead, g_frozen[None, :], g_l)
            g_h = np.where(dead, g_frozen[None, :], g_h)
            is_read = pc % read_every == 0
            if is_read.any():
                rows_out = slice(start, start + int(is_read.sum()))
                read_no = point_no[is_read]
                for g_arr, out, tag_rtn, tag_noise in (
                    (g_l[is_read], lrs_out, Tag.CYCLE_RTN_LRS, Tag.CYCLE_NOISE_LRS),
                    (g_h[is_read], hrs_out, Tag.CYCLE_RTN_HRS, Tag.CYCLE_NOISE_HRS),
                ):
                    occ = np.zeros(g_arr.shape, dtype=bool)
                    if rtn.any():
                        u = self.streams.uniform(keys[rtn][None, :], tag_rtn, read_no)
                        occ[:, rtn] = u < pi_full[rtn][None, :]
                    g_eff = g_arr * (1.0 - self.rtn_amp[idx][None, :] * occ)
                    out[rows_out] = g_eff * i_scale + noise_sd * self.streams.normal(k_row, tag_noise, read_no)
            if pc[-1] == n_cycles:
                final_hrs = g_h[-1]

        # Bookkeeping: clock (cells cycled one after the other), wear, failure flags, final state.
        t_end = self._op_times(np.full(m, per_cell_ns, dtype=np.int64))
        g_end = np.where(healthy & ~fails, final_hrs, g_frozen)
        self.cycles_used[idx] = n0 + n_cycles * wear_per_cycle
        fi = idx[fails]
        self.stuck_lrs[fi] = self.fail_mode_lrs[fi]
        self.stuck_hrs[fi] = ~self.fail_mode_lrs[fi]
        self._relax_on[fi] = False
        self._g0[fi] = g_end[fails]
        alive = healthy & ~fails
        self._reprogram(idx[alive], g_start[alive], g_end[alive], t_end[alive], keys[alive])
        return CycleResult(
            cycles=read_cycles,
            lrs_current=lrs_out,
            hrs_current=hrs_out,
            set_pulses=n_cycles * m,
            reset_pulses=n_cycles * m,
            read_ops=2 * n_reads * m,
            cycles_used=self.cycles_used[idx].copy(),
            failed_at=np.where(fails, k_fail, -1).astype(np.int64),
            elapsed_s=(self._clock_ns - t_start_ns) * 1e-9,
        )

    # ------------------------------------------------------------------ inspection / ground truth
    def state_flags(self, r, c) -> dict[str, np.ndarray]:
        """Per-cell flags: formed, failed_to_form (cannot form at any voltage), stuck_lrs/hrs, cycles_used, cycles_to_failure."""
        idx = self._index(r, c)
        return {
            "formed": self.formed[idx].copy(),
            "failed_to_form": ~self.can_form[idx],
            "stuck_lrs": self.stuck_lrs[idx].copy(),
            "stuck_hrs": self.stuck_hrs[idx].copy(),
            "cycles_used": self.cycles_used[idx].copy(),
            "cycles_to_failure": self.cycles_to_failure[idx].copy(),
        }

    def ground_truth(self) -> dict:
        """Every parameter and per-cell draw of this chip (see sim_backend.ground_truth for the layout)."""
        from sim_backend.ground_truth import array_ground_truth

        return array_ground_truth(self)

    def write_ground_truth(self, path, read_chain=None) -> None:
        """Write the ground truth (and optionally a ReadChain's true calibration) to an HDF5 file."""
        from sim_backend.ground_truth import write_ground_truth

        write_ground_truth(path, self, read_chain=read_chain)


@dataclass(frozen=True)
class PristineSteps:
    """Pulses of a forming ramp that leave a cell pristine, each with its read (`RRAMArray.pristine_steps`)."""

    cell: int  # flat index
    pulse_current: np.ndarray  # (k,) peak current of each pulse (A)
    read_current: np.ndarray  # (k,) the read after it (A)
    occupied: np.ndarray  # (k,) the trap's state after that read
    t_read: np.ndarray  # (k,) when that read completes (s)
    step_ns: int  # one pulse and one read on the clock


@dataclass(frozen=True)
class VerifyRamps:
    """The pulses of one write-verify request, all `width_ns` wide: the k-th SET of a run of consecutive SETs at
    set_v[k] (V) with gate set_gate[k] (V), the k-th RESET of a run at reset_v[k] (V, <= 0); k = 0 .. levels-1."""

    width_ns: float
    set_v: np.ndarray
    set_gate: np.ndarray
    reset_v: np.ndarray


def _first_segments(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, B(node_0)) of n cells in segment 0 of their relaxation paths: L in [0, node_1), B = 0."""
    return np.zeros(n), np.full(n, _RELAX_NODES[1]), np.zeros(n)


class VerifyBatch:
    """The cells of one write-verify request, programmed in lockstep rounds of one pulse and one verify read each.

    Gives the numbers of the separate calls it replaces, bit for bit: its first read is `read_current` of
    every cell at `first_read_ns`; round j is `set_pulse` on the cells it moves up, `reset_pulse` on those it
    moves down, each at first_read + j * (pulse + read) + pulse, then `read_current` of all of them one read
    later (`reference_ops.write_verify_reference` makes exactly these calls). It is faster by doing less per
    round: one pass over the cells instead of three; the state of the cells still being programmed kept in
    arrays of their own, in order (cells that are done leave with `retire`, and their state goes back to the
    array then, or at `close`); the random numbers, times and trap decays of eight rounds computed at once
    (a cell's event counter moves by exactly two per round and its times are fixed, so they are known
    ahead); per-cell constants and the ramps' voltage terms computed once; the relaxation t0 and sigma_r of
    each cell kept from the read that computed them (they depend on the programmed value only); the path
    segment each cell's relaxation is in kept with its node's normal and B(node_k), recomputed only when a read
    falls in another segment; a new relaxation path drawn lazily, its first node at once, the rest (from the
    same key, so the same path) when a read reaches past that node or the cell leaves. Call `close` when done,
    also after an error. Every cell is formed.
    """

    # Columns of a round's precomputed numbers (`_refill`): -xi * width of the kinetics, the target's normal,
    # the new path's first node (as stored: in float32), the read noise's normal, the trap's uniform, pulse and
    # read times (s), the trap's decay since the last read.
    _A, _ZT, _Z0, _ZN, _UR, _TP, _TR, _DECAY = range(8)
    # The per-cell arrays of the cells still being programmed, in their order (compressed together by `retire`).
    _ACTIVE = (
        "_slot _idx _vth_set _vth_reset _off_lrs _off_hrs _ctf _rtn_pres _rtn_pi _rtn_neg_rate _amp _first _ev_base "
        "_g0 _on _cyc _rtn _stuck _t0 _sig _lazy _path_round _t_prog _lo _hi _zk _bsum"
    ).split()

    def __init__(self, array: RRAMArray, idx: np.ndarray, first_read_ns: np.ndarray, ramps: VerifyRamps) -> None:
        a, p = array, array.params
        self.array = a
        n = idx.size
        if not a.formed[idx].all():
            raise ValueError("verify_batch: every cell of a write-verify batch must be formed")
        first = np.asarray(first_read_ns)
        if first.shape != (n,) or not np.issubdtype(first.dtype, np.integer) or (n and int(first.min()) < a.clock_ns):
            raise ValueError(f"verify_batch: first_read_ns must be {n} integer times (ns), none before the clock")
        self.rounds = np.zeros(n, dtype=np.int64)  # pulses each cell has had, by batch position (final at close)
        self._slot = np.arange(n)  # batch position of each cell still being programmed
        self._idx = idx.astype(np.int64)
        self._first = first.astype(np.int64)
        self._pulse_ns = int(a.pulse_ns(ramps.width_ns))
        self._step_ns = self._pulse_ns + a.read_ns
        self._width = float(ramps.width_ns)
        self._vth_set, self._vth_reset = a.v_set_th[idx], a.v_reset_th[idx]
        self._off_lrs = a.lrs_d2d[idx] + a.spatial_ln_gain[idx]  # `_ln_lrs_target`, `_ln_hrs_target`
        self._off_hrs = a.hrs_d2d[idx] + a.spatial_ln_gain[idx]
        set_v, reset_v = np.asarray(ramps.set_v, dtype=float), np.asarray(ramps.reset_v, dtype=float)
        # By ramp step, flattened: index 2 k + 1 for the k-th SET of a run, 2 k for the k-th RESET.
        vabs = np.stack([np.abs(reset_v), np.abs(set_v)], axis=1)
        ln_base = np.stack(  # ln of the median target: `_ln_hrs_target`, `_ln_lrs_target`
            [np.log(p.g_hrs(vabs[:, 0])), np.log(p.g_lrs(np.asarray(ramps.set_gate, dtype=float)))], axis=1
        )
        self._vabs, self._ln_base = vabs.ravel(), ln_base.ravel()
        self._live = self._vabs != 0  # a 0 V step switches nothing
        self._all_live = bool(self._live.all())
        self._wear_coef = np.array([p.wear_a_hrs, -p.wear_a_lrs])  # `DeviceParams.wear_shift` (HRS, LRS)
        self._c2c = np.array([p.hrs_sigma_c2c, p.lrs_sigma_c2c])
        self._restart_dg = p.relax_restart_frac * p.g_max
        self._ctf = a.cycles_to_failure[idx]
        # A pulse adds at most half a cycle of wear: only cells this close to their end can wear out here.
        self._any_may_die = bool((self._ctf <= a.cycles_used[idx] + 0.5 * len(set_v) + 1.0).any())
        self._stuck = a.stuck_lrs[idx] | a.stuck_hrs[idx]  # changes here only when a cell wears out
        self._any_stuck = bool(self._stuck.any())
        rate_in, rate_out = 1.0 / a.rtn_tau_empty[idx], 1.0 / a.rtn_tau_full[idx]  # `_rtn_update`
        self._rtn_pres = a.rtn_present[idx]
        self._rtn_pi = rate_in / (rate_in + rate_out)
        self._rtn_neg_rate = -(rate_in + rate_out)
        self._amp = a.rtn_amp[idx]
        # Mirrors of the array's state, written back when a cell leaves (t_prog and the path go to the array at once).
        self._g0 = a._g0[idx]
        self._on = a._relax_on[idx]
        self._cyc = a.cycles_used[idx]
        self._rtn = a._rtn_state[idx]
        self._t0, self._sig = np.zeros(n), np.zeros(n)  # relaxation t0 and sigma_r of each cell's programmed value
        self._lazy = np.zeros(n, dtype=bool)  # the cell's relaxation path has only its first node drawn
        self._path_round = np.zeros(n, dtype=np.uint64)  # the round whose pulse key that path comes from
        self._t_prog = a._t_prog[idx]  # (written to the array too whenever it changes)
        # The path segment each cell's last relaxed read fell in, [lo, hi) in L, with its node z_k (as stored) and
        # B(node_k): segment 0 to begin with, where z_0 is the first node and B(node_0) = 0.
        self._lo, self._hi, self._bsum = _first_segments(n)
        self._zk = a._relax_z[idx, 0].astype(np.float64)
        self._ev_base = a._events[idx]  # set by `begin`: round j's pulse takes event ev_base + 2j, its read + 1
        self._buf = np.zeros((0, n, 8))
        self._levels = len(set_v)  # the rounds a caller running every cell to its pulse budget makes at most
        self._j = 0  # the next round
        self._j0 = 0  # first round in `_buf`
        self._brow: np.ndarray | None = None
        self._began = self._closed = False
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (cells, events): lazy paths of cells that left

    @property
    def active(self) -> int:
        """Cells still being programmed."""
        return int(self._slot.size)

    # --- reads ------------------------------------------------------------------------------------
    def begin(self, v_read: float) -> np.ndarray:
        """The first read of every cell, at its first_read_ns, at v_read (V): the currents (A), in batch order."""
        if self._began:
            raise ValueError("verify_batch: begin() is called once")
        a = self.array
        idx = self._idx
        self._v1 = np.array([float(v_read)])
        self._s_v, self._s_ref = a._iv_shapes(float(v_read))
        self._noise = a.params.read_noise_frac * a.params.g_max * np.abs(self._v1)
        t = self._first.astype(np.float64) * 1e-9
        u = uniforms_at(a._event_keys(idx, unique=True)[:, None], _READ_OFFSETS)
        self._ev_base = a._events[idx]
        self._began = True
        self._t0, self._sig = a._cached_relax_params(idx, self._g0)
        g = self._relaxed_now(t, self._g0, self._on, None)
        pres = self._rtn_pres
        decay = np.exp(self._rtn_neg_rate[pres] * np.maximum(t[pres] - a._rtn_t[idx[pres]], 0.0))
        pi_full = self._rtn_pi[pres]
        occupied = np.zeros(idx.size, dtype=bool)
        occupied[pres] = u[pres, 0] < pi_full + (self._rtn[pres] - pi_full) * decay
        self._rtn = occupied
        return self._current(g, occupied, ndtri(u[:, 1]))

    def _current(self, g: np.ndarray, occupied: np.ndarray, z_noise: np.ndarray) -> np.ndarray:
        """`RRAMArray._trap_read` of the active cells: the trap's share off, the I-V at the read voltage, white noise."""
        g_eff = g * (1.0 - self._amp * occupied)
        return g_eff * self._v1 * self._s_v / self._s_ref + self._noise * z_noise

    def _relaxed_now(self, t: np.ndarray, g0: np.ndarray, on: np.ndarray, up: np.ndarray | None) -> np.ndarray:
        """`RRAMArray._g_at` of the active cells at times t as one call (up None), or as two (where `up`, and not).

        When every cell relaxes, the relaxation is computed from the batch's own copies of t_prog and of the
        path segment each cell is in (`_segments`): the same terms in the same order as `RRAMArray._relaxed`,
        G = g0 + (mu L + sigma_r (B(node_k) + z_k sqrt(L - node_k))), floored; else `_conductance`.
        """
        if np.count_nonzero(on) == on.size:
            L = np.log10(1.0 + np.maximum(t - self._t_prog, 0.0) / self._t0)
            self._segments(L)
            a = self.array
            term = self._sig * (self._bsum + self._zk * np.sqrt(L - self._lo))
            term = 0.0 + term if a._relax_mu_zero else a.params.relax_mu(g0) * L + term
            return np.maximum(g0 + term, a.params.g_floor)
        return self._conductance(t, g0, on, up)

    def _segments(self, L: np.ndarray) -> None:
        """Bring each active cell's path segment (lo, hi, z_k, B(node_k)) to the one holding L, the rest of a lazy
        path drawn first where L is past its first node; B from `RRAMArray._path_below`, as `_relaxed` takes it."""
        moved = (L < self._lo) | (L >= self._hi)
        if not np.count_nonzero(moved):
            return
        ci = moved.nonzero()[0]
        k = _RELAX_NODES.searchsorted(L[ci], side="right") - 1
        late = self._lazy[ci] & (k > 0)
        if np.count_nonzero(late):
            self._draw_paths(ci[late])
        a, idx = self.array, self._idx[ci]
        self._lo[ci], self._hi[ci] = _RELAX_NODES[k], _RELAX_UPPER[k]
        self._zk[ci] = a._relax_z.ravel()[idx * _RELAX_NODES.size + k]
        deep = k > 0
        bsum = np.zeros(ci.size)
        if np.count_nonzero(deep):
            bsum[deep] = a._path_below(idx[deep], k[deep])
        self._bsum[ci] = bsum

    def _conductance(self, t: np.ndarray, g0: np.ndarray, on: np.ndarray, up: np.ndarray | None) -> np.ndarray:
        """`RRAMArray._g_at` of the active cells at times t as one call (up None), or as two (where `up`, and not)."""
        n_on = np.count_nonzero(on)
        if not n_on:
            return g0.copy()
        if n_on == on.size:
            return self._relax(None, t, g0, self._t0, self._sig)
        sel = on.nonzero()[0]
        g = g0.copy()
        g[sel] = self._relax(sel, t[sel], g0[sel], self._t0[sel], self._sig[sel])
        off = ~on
        floor = self.array.params.g_floor
        for grp in (off,) if up is None else (up, ~up):  # a call with a relaxing cell floors its others
            fix = grp & off
            if np.count_nonzero(fix) and (up is None or np.count_nonzero(grp & on)):
                g[fix] = np.maximum(g0[fix], floor)
        return g

    def _relax(
        self, sel: np.ndarray | None, t: np.ndarray, g0: np.ndarray, t0: np.ndarray, sig: np.ndarray
    ) -> np.ndarray:
        """`RRAMArray._relaxed` of active cells sel (None: all), first drawing the rest of a lazy path a read reaches."""
        a = self.array
        idx = self._idx if sel is None else self._idx[sel]
        L, k = a._relax_clock(idx, t, t0)
        if np.count_nonzero(k):
            late = (self._lazy if sel is None else self._lazy[sel]) & (k > 0)
            if np.count_nonzero(late):
                self._draw_paths(late.nonzero()[0] if sel is None else sel[late])
        return a._relaxed(idx, t, g0, (t0, sig), (L, k))

    def _draw_paths(self, ci: np.ndarray) -> None:
        """Draw the whole relaxation path of active cells ci drawn lazily (their first node is already stored)."""
        a = self.array
        idx = self._idx[ci]
        keys = a.streams.event_keys(idx, self._ev_base[ci] + np.uint64(2) * self._path_round[ci])
        a._relax_z[idx] = a.streams.normal(keys[:, None], Tag.RELAX_PATH, _RELAX_DRAWS).astype(np.float32)
        a._paths_changed(idx)
        self._lazy[ci] = False

    def _refill(self) -> None:
        """Rounds j .. j+R-1 of the active cells ahead: their random numbers (as `_event_keys` and the draws give
        them), the pulse and read times (as `_explicit_times` makes them) and the trap decays between reads.

        Every number is a function of its cell and round alone, so R (at least eight rounds, about
        `_REFILL_PAIRS` cell-rounds, no further than the ramps' length when that is further than eight) changes
        the cost, never the numbers; rounds computed and not run are dropped."""
        a, p, j = self.array, self.array.params, self._j
        R = max(_ROUNDS_PER_DRAW, min(_REFILL_PAIRS // max(self._idx.size, 1), self._levels - j))
        rounds = np.arange(j, j + R, dtype=np.uint64)
        ev = self._ev_base[:, None] + np.uint64(2) * rounds[None, :]  # (cells, rounds): each pulse's event
        keys = a.streams.event_keys(self._idx[:, None, None], ev[:, :, None] + _EVENT_PAIR)
        u = uniforms_at(keys[:, :, _ROUND_KEY_COLUMN], _ROUND_OFFSETS)
        z = ndtri(u[:, :, :4])  # normals: kinetics, target, first path node, read noise
        out = np.empty((R, self._idx.size, 8))  # a new buffer: views of the last one stay valid
        out[:, :, self._A] = (-np.exp(p.step_sigma * z[:, :, 0]) * self._width).T
        out[:, :, self._ZT] = z[:, :, 1].T
        out[:, :, self._Z0] = z[:, :, 2].T.astype(np.float32)
        out[:, :, self._ZN] = z[:, :, 3].T
        out[:, :, self._UR] = u[:, :, 4].T
        start_ns = self._first[None, :] + (np.arange(j, j + R, dtype=np.int64) * self._step_ns)[:, None]
        tp_ns = start_ns + self._pulse_ns
        tp = tp_ns.astype(np.float64) * 1e-9
        tr = (tp_ns + a.read_ns).astype(np.float64) * 1e-9
        out[:, :, self._TP], out[:, :, self._TR] = tp, tr
        before = start_ns.astype(np.float64) * 1e-9  # the previous read: round j-1's, or the first
        out[:, :, self._DECAY] = np.exp(self._rtn_neg_rate[None, :] * np.maximum(tr - before, 0.0))
        self._buf, self._j0 = out, j
        self._brow = None  # every row in use, in order

    # --- one round --------------------------------------------------------------------------------
    def pulse_and_read(self, up: np.ndarray, level: np.ndarray) -> np.ndarray:
        """The next round of the active cells: a SET where `up`, else a RESET, at ramp step `level`; then the
        verify read. Returns the read currents (A), in the active cells' order."""
        a, p = self.array, self.array.params
        if not self._began or self._closed:
            raise ValueError("verify_batch: begin() first, and no rounds after close()")
        j = self._j
        if j >= self._j0 + self._buf.shape[0]:
            self._refill()
        d = self._buf[j - self._j0] if self._brow is None else self._buf[j - self._j0][self._brow]
        g0 = self._g0

        # --- the pulse: `RRAMArray._pulse` of formed cells ---
        tp = d[:, self._TP]
        g_before = self._relaxed_now(tp, g0, self._on, up)
        lng = np.log(np.maximum(g_before, p.g_floor))
        ui = up.astype(np.intp)
        li = 2 * level + ui
        vth = np.where(up, self._vth_set, self._vth_reset)
        f = -np.expm1(d[:, self._A] / (p.tau0_ns * np.exp(-(self._vabs[li] - vth) / p.v_kin)))  # `tau_ns`
        cyc = self._cyc
        wear = np.log10(1.0 + np.maximum(cyc, 0.0) / p.wear_n0)
        off = np.where(up, self._off_lrs, self._off_hrs)
        ln_t = (self._ln_base[li] + off + self._wear_coef[ui] * wear) + self._c2c[ui] * d[:, self._ZT]
        gap = ln_t - lng
        delta = np.where(up, np.maximum(gap, 0.0), np.minimum(gap, 0.0))
        new = lng + f * delta
        f = f * (delta != 0.0)  # f >= 0: exactly `where(delta != 0, f, 0)`
        stuck = self._stuck if self._any_stuck else None
        sw = None  # None: every cell switches
        if stuck is not None or not self._all_live:
            sw = ~stuck if stuck is not None else np.ones(up.size, dtype=bool)
            if not self._all_live:
                sw &= self._live[li]
            rest = (~sw).nonzero()[0]
            new[rest] = lng[rest]
            f[rest] = 0.0
        g_after = np.exp(new)
        if stuck is not None:
            g_after[stuck] = g_before[stuck]
        after = cyc + 0.5 * f
        self._cyc = after
        if self._any_may_die:
            dying = (cyc < self._ctf) & (after >= self._ctf)
            if sw is not None:
                dying &= sw
            if np.count_nonzero(dying):
                di = self._idx[dying]
                mode_lrs = a.fail_mode_lrs[di]
                g_after[dying] = np.where(
                    mode_lrs, np.maximum(g_before[dying], g_after[dying]), np.minimum(g_before[dying], g_after[dying])
                )
                a.stuck_lrs[di] = mode_lrs
                a.stuck_hrs[di] = ~mode_lrs
                a._relax_on[di] = False
                self._on = self._on.copy()
                self._on[dying] = False
                self._stuck = self._stuck | dying
                self._any_stuck = True
                stuck = self._stuck

        # --- `RRAMArray._reprogram`, the new path drawn lazily ---
        restart = np.abs(g_after - g_before) > self._restart_dg
        if stuck is not None:
            restart &= ~stuck
        z0 = d[:, self._Z0]
        if np.count_nonzero(restart) == up.size:
            a._t_prog[self._idx] = self._t_prog = tp
            a._relax_z[:, 0][self._idx] = z0
            self._zk = z0.copy()  # written in place by `_segments`: not a view of the round's numbers
            self._lo, self._hi, self._bsum = _first_segments(up.size)
            a._paths_changed(self._idx)
            self._lazy[:] = True
            self._path_round[:] = j
            g0 = self._g0 = g_after
            on = self._on = restart
        else:
            rs = restart.nonzero()[0]
            ri = self._idx[rs]
            g0 = self._g0 = g0.copy()
            g0[rs] = g_after[rs]
            self._t_prog = self._t_prog.copy()
            a._t_prog[ri] = self._t_prog[rs] = tp[rs]
            on = self._on = self._on.copy()
            on[rs] = True
            a._relax_z[:, 0][ri] = self._zk[rs] = z0[rs]
            self._lo[rs], self._hi[rs], self._bsum[rs] = 0.0, _RELAX_NODES[1], 0.0
            a._paths_changed(ri)
            self._lazy[rs] = True
            self._path_round[rs] = j
            keep = (~restart).nonzero()[0]
            on_k = on[keep]
            sh = keep[on_k]
            g0[sh] += g_after[sh] - g_before[sh]
            dr = keep[~on_k]
            g0[dr] = g_after[dr]

        # --- the verify read: `read_current` ---
        self._t0, self._sig = a._relax_params(g0)
        g = self._relaxed_now(d[:, self._TR], g0, on, None)
        pi_full = self._rtn_pi
        occupied = (d[:, self._UR] < pi_full + (self._rtn - pi_full) * d[:, self._DECAY]) & self._rtn_pres
        self._rtn = occupied
        self._j = j + 1
        return self._current(g, occupied, d[:, self._ZN])

    # --- cells leaving ----------------------------------------------------------------------------
    def retire(self, keep: np.ndarray) -> None:
        """The active cells where `keep` is False are done: their state goes back to the array."""
        self._write_back((~keep).nonzero()[0])
        stay = keep.nonzero()[0]  # positions, not the mask: taking by index is the faster gather
        for name in self._ACTIVE:
            setattr(self, name, getattr(self, name)[stay])
        self._brow = stay if self._brow is None else self._brow[stay]  # the rows of `_buf` still in use, in order

    def _write_back(self, ci: np.ndarray) -> None:
        """Active cells ci to the array: programmed value, relaxation flag, wear, trap, event counter, last read
        time; and the t0, sigma_r of their values to `_cached_relax_params`. The rest of a lazily drawn path is
        drawn at `close` (nothing reads it before)."""
        if not ci.size:
            return
        a = self.array
        lazy = ci[self._lazy[ci]]
        if lazy.size:
            self._pending.append((self._idx[lazy], self._ev_base[lazy] + np.uint64(2) * self._path_round[lazy]))
        idx, n_rounds = self._idx[ci], self._j
        a._g0[idx] = self._g0[ci]
        a._relax_on[idx] = self._on[ci]
        a.cycles_used[idx] = self._cyc[ci]
        a._rtn_state[idx] = self._rtn[ci]
        a._events[idx] = self._ev_base[ci] + np.uint64(2 * n_rounds)
        a._rtn_t[idx] = (self._first[ci] + n_rounds * self._step_ns).astype(np.float64) * 1e-9  # the last read
        a._remember_relax_params(idx, self._g0[ci], self._t0[ci], self._sig[ci])
        self.rounds[self._slot[ci]] = n_rounds

    def close(self) -> None:
        """Every cell still active leaves: the chip is then as the separate calls leave it."""
        if self._began and not self._closed:
            self._write_back(np.arange(self._slot.size))
            if self._pending:
                a = self.array
                idx = np.concatenate([i for i, _ in self._pending])
                keys = a.streams.event_keys(idx, np.concatenate([e for _, e in self._pending]))
                a._relax_z[idx] = a.streams.normal(keys[:, None], Tag.RELAX_PATH, _RELAX_DRAWS).astype(np.float32)
                a._paths_changed(idx)
                self._pending = []
        self._closed = True
