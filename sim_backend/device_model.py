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

from sim_backend.device_params import DeviceParams
from sim_backend.random_streams import CellStreams, Tag, site_normals

# Node positions (in L = log10(1 + dt/t0)) of the piecewise Brownian relaxation path: each cell
# stores one standard normal per segment, so the path is fixed at programming time and reading it
# at any time does not consume randomness (reads at different times are consistently correlated).
_RELAX_NODES = np.array([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
_RELAX_WIDTHS = np.append(np.diff(_RELAX_NODES), np.inf)
_RELAX_SQRT_WIDTHS = np.sqrt(np.diff(_RELAX_NODES))  # of the full segments (the last one is open-ended)
CLOCK_LIMIT_NS = 2**63 - 1  # the clock is a signed 64-bit count of nanoseconds: it is refused beyond, never wraps
_RELAX_DRAWS = np.arange(_RELAX_NODES.size, dtype=np.uint64)[None, :]
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
    arr = np.atleast_1d(np.asarray(value))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D integer index array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must contain integers")
        arr = arr.astype(np.int64)
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise ValueError(f"{name} index out of range [0, {size}): min {arr.min()}, max {arr.max()}")
    return arr


def _broadcast(name: str, value, n: int) -> np.ndarray:
    """Broadcast a scalar or per-cell operand to n cells, rejecting NaN/inf."""
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
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
            setattr(self, name, value.astype(ours.dtype, copy=True))
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
        if np.unique(idx).size != idx.size:
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
        if idx.size > 1 and not unique:
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
        """Noiseless conductance of cells idx at times t (programmed value plus relaxation path)."""
        p = self.params
        g0 = self._g0[idx]
        on = self._relax_on[idx]
        if not on.any():
            return g0.copy()
        L = p.relax_log_time(t - self._t_prog[idx], g0)  # each cell's clock runs with its own t0(g0)
        # B(L) = B(node_k) + z_k sqrt(L - node_k) in the segment k holding L; B at the nodes is the running
        # sum of z_j sqrt(width_j), accumulated per cell in node order (cumsum: sequential, so no result
        # depends on how many cells share the call, unlike a pairwise or BLAS reduction).
        z = self._relax_z[idx].astype(float)
        k = np.searchsorted(_RELAX_NODES, L, side="right") - 1
        b_nodes = np.cumsum(z[:, :-1] * _RELAX_SQRT_WIDTHS[None, :], axis=1)  # B(node_1), ..., B(node_last)
        rows = np.arange(idx.size)
        b_below = np.where(k > 0, b_nodes[rows, np.maximum(k - 1, 0)], 0.0)
        brown = b_below + z[rows, k] * np.sqrt(L - _RELAX_NODES[k])
        g = g0 + on * (p.relax_mu(g0) * L + p.relax_sigma(g0) * brown)
        return np.maximum(g, p.g_floor)

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
        relaxing = self._relax_on[idx]
        shift = ~restart & relaxing
        self._g0[idx[shift]] += g_after[shift] - g_before[shift]
        direct = ~restart & ~relaxing
        self._g0[idx[direct]] = g_after[direct]

    # ------------------------------------------------------------------ I-V
    def _iv(self, g: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Cell current (A) at voltage v for conductance g defined at v_read_ref (sinh nonlinearity)."""
        p = self.params

        def shape(x: np.ndarray) -> np.ndarray:
            y = np.asarray(x, dtype=float) / p.v_nl
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(np.abs(y) < 1e-8, 1.0, np.sinh(y) / np.where(y == 0, 1.0, y))
            return out

        return g * v * shape(v) / shape(np.asarray(p.v_read_ref))

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
            v_form_eff = self.v_form[idx] - p.v_form_per_decade * np.log10(width_ns / p.v_form_width_ref_ns)
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

    def _pulse_op(
        self, r, c, v, width_ns, v_gate, op: str, at_ns=None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validate a pulse op, time-stamp it and apply it; returns (idx, v, v_gate, G before, G after)."""
        idx = self._unique_index(r, c, op)
        n = idx.size
        v = _broadcast(f"{op} voltage", v, n)
        width = _broadcast(f"{op} width_ns", width_ns, n)
        gate = _broadcast(f"{op} v_gate", v_gate, n)
        if np.any(width <= 0):
            raise ValueError(f"{op}: width_ns must be positive, got {width_ns!r}")
        if op == "reset_pulse" and np.any(v > 0):
            raise ValueError(f"reset_pulse: RESET is bipolar, give a negative voltage (got {np.max(v)} V)")
        if op != "reset_pulse" and np.any(v < 0):
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
        if volts.ndim != 1 or volts.size == 0 or not np.all(np.isfinite(volts)):
            raise ValueError("iv_sweep: voltages must be a non-empty 1-D array of finite values")
        n = idx.size
        width = _broadcast("iv_sweep width_ns", width_ns, n)
        if np.any(width <= 0):
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
    def _rtn_update(self, idx: np.ndarray, t: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Advance each cell's two-state trap to times t (exact Markov transition); returns occupancy."""
        state = np.zeros(idx.size, dtype=bool)
        pres = self.rtn_present[idx]
        if pres.any():
            pi_ = idx[pres]
            rate_in = 1.0 / self.rtn_tau_empty[pi_]
            rate_out = 1.0 / self.rtn_tau_full[pi_]
            pi_full = rate_in / (rate_in + rate_out)
            decay = np.exp(-(rate_in + rate_out) * np.maximum(t[pres] - self._rtn_t[pi_], 0.0))
            p_full = pi_full + (self._rtn_state[pi_] - pi_full) * decay
            state[pres] = self.streams.uniform(keys[pres], Tag.RTN) < p_full
        self._rtn_state[idx] = state
        self._rtn_t[idx] = t
        return state

    def read_current(self, r, c, v_read: float | np.ndarray, at_ns=None) -> np.ndarray:
        """Read current (A) at v_read now: I(G) with RTN and white read noise (1% of g_max * v_read); at_ns as in `set_pulse`."""
        idx = self._index(r, c)
        v = _broadcast("v_read", v_read, idx.size)
        if at_ns is None:
            t = self._op_times(np.full(idx.size, self.read_ns, dtype=np.int64))
        else:
            t = self._explicit_times(at_ns, idx.size, "read_current")
        keys = self._event_keys(idx)
        g = self._g_at(idx, t)
        occupied = self._rtn_update(idx, t, keys)
        g_eff = g * (1.0 - self.rtn_amp[idx] * occupied)
        noise = self.params.read_noise_frac * self.params.g_max * np.abs(v) * self.streams.normal(keys, Tag.READ_NOISE)
        return self._iv(g_eff, v) + noise

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
