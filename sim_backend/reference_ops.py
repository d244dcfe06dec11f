"""The first, straightforward implementations of the simulator's batch paths, kept as the reference of the fast ones.

READ, READ_BLOCK and WRITE_VERIFY now run on faster code (`RRAMArray._g_at` and `read_current`,
`RRAMArray.verify_batch`, cached limits and handler table in `FirmwareEngine`) that must give the chip's
records bit for bit as before. This module keeps the code they replaced, unchanged but for its place:
`ReferenceEngine` is a `FirmwareEngine` on a `ReferenceArray` that answers every request the old way.
tests/sim_backend/test_batch_speed_equivalence.py runs both on the same requests and compares responses and
chip states byte for byte; benchmarks/bench_sim_ops.py (`--compare`) times one against the other.
Not for use by anything else: it is slower by design.
"""

from __future__ import annotations

import numpy as np

from firmware_protocol import BoardLimits, CellResult, Status
from firmware_protocol import messages as m
from firmware_protocol.errors import AbortedError, BadArgumentError
from sim_backend.device_model import _RELAX_NODES, _RELAX_SQRT_WIDTHS, RRAMArray, _broadcast
from sim_backend.firmware import _STUCK_MIN_PULSES, FirmwareEngine, no_pristine_steps
from sim_backend.random_streams import Tag


class ReferenceArray(RRAMArray):
    """An `RRAMArray` whose relaxation, event counting and reads are the first implementations."""

    def _take_events(self, idx: np.ndarray, unique: bool = False) -> np.ndarray:
        """Each addressed cell's event counter before this operation (then counted); repeats of a cell count on."""
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

    def _g_at(self, idx: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Noiseless conductance of cells idx at times t: every cell's whole path summed, off cells masked."""
        p = self.params
        g0 = self._g0[idx]
        on = self._relax_on[idx]
        if not on.any():
            return g0.copy()
        L = p.relax_log_time(t - self._t_prog[idx], g0)
        z = self._relax_z[idx].astype(float)
        k = np.searchsorted(_RELAX_NODES, L, side="right") - 1
        b_nodes = np.cumsum(z[:, :-1] * _RELAX_SQRT_WIDTHS[None, :], axis=1)
        rows = np.arange(idx.size)
        b_below = np.where(k > 0, b_nodes[rows, np.maximum(k - 1, 0)], 0.0)
        brown = b_below + z[rows, k] * np.sqrt(L - _RELAX_NODES[k])
        g = g0 + on * (p.relax_mu(g0) * L + p.relax_sigma(g0) * brown)
        return np.maximum(g, p.g_floor)

    def _rtn_update_keyed(self, idx: np.ndarray, t: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Advance each cell's trap to times t, drawing its uniform from the read's keys; returns occupancy."""
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
        """Read current (A) at v_read: each draw hashed on its own, the I-V shape evaluated per cell."""
        idx = self._index(r, c)
        v = _broadcast("v_read", v_read, idx.size)
        if at_ns is None:
            t = self._op_times(np.full(idx.size, self.read_ns, dtype=np.int64))
        else:
            t = self._explicit_times(at_ns, idx.size, "read_current")
        keys = self._event_keys(idx)
        g = self._g_at(idx, t)
        occupied = self._rtn_update_keyed(idx, t, keys)
        g_eff = g * (1.0 - self.rtn_amp[idx] * occupied)
        noise = self.params.read_noise_frac * self.params.g_max * np.abs(v) * self.streams.normal(keys, Tag.READ_NOISE)
        return self._iv(g_eff, v) + noise


def write_verify_reference(
    engine: FirmwareEngine, req: m.WriteVerifyRequest
) -> m.WriteVerifyResult | tuple[m.WriteVerifyResult, Status]:
    """WRITE_VERIFY as first written: each round one `set_pulse`, one `reset_pulse` and one read call."""
    self = engine
    e = req.entries
    v_read = self._check_read_v(req.v_read_mv)
    rows, cols = e["row"].astype(np.int64), e["col"].astype(np.int64)
    if np.unique(rows * self.config.cols + cols).size != rows.size:
        raise BadArgumentError("write-verify batch lists a cell more than once")
    n = rows.size
    target, tol = e["target_s"].astype(float), e["tol_s"].astype(float)
    max_p = e["max_pulses"].astype(np.int64)
    status = np.full(n, CellResult.MAX_PULSES, dtype=np.uint8)
    pulses = np.zeros(n, dtype=np.int64)
    s_idx = np.zeros(n, dtype=np.int64)
    r_idx = np.zeros(n, dtype=np.int64)
    formed = self.array.formed[rows * self.config.cols + cols]
    status[~formed] = CellResult.NOT_FORMED
    codes = np.zeros(n, dtype=np.uint16)
    g = np.zeros(n)
    act = np.flatnonzero(formed)
    read_ns = self.array.read_ns
    pulse_ns = int(self.array.pulse_ns(req.width_ns))
    step_ns = pulse_ns + read_ns
    slot_ns = np.where(formed, read_ns + max_p * step_ns, 0).astype(np.int64)
    t0 = self.array.clock_ns
    slot_end = t0 + np.cumsum(slot_ns)
    first_read = slot_end - slot_ns + read_ns
    if act.size:
        codes[act], _, g[act] = self._read_g(rows[act], cols[act], v_read, first_read[act])
    g_start = g.copy()
    moved = np.zeros(n)
    aborted = False
    while act.size:
        done = np.abs(g[act] - target[act]) <= tol[act]
        status[act[done]] = CellResult.CONVERGED
        act = act[~done]
        act = act[pulses[act] < max_p[act]]
        if not act.size:
            break
        if not self._keep_going() or self._abort_queued():
            status[act] = CellResult.ABORTED
            aborted = True
            break
        up = act[g[act] < target[act]]
        down = act[g[act] >= target[act]]
        if up.size:
            v = np.minimum(req.set_v_start_mv + s_idx[up] * req.set_v_step_mv, req.set_v_stop_mv) / 1000
            gate = np.minimum(req.set_gate_start_mv + s_idx[up] * req.set_gate_step_mv, req.set_gate_stop_mv) / 1000
            at = first_read[up] + pulses[up] * step_ns + pulse_ns
            self.array.set_pulse(rows[up], cols[up], v, req.width_ns, gate, at_ns=at)
            self.counters.set += up.size
            s_idx[up] += 1
            r_idx[up] = 0
        if down.size:
            v = np.maximum(req.reset_v_start_mv + r_idx[down] * req.reset_v_step_mv, req.reset_v_stop_mv) / 1000
            at = first_read[down] + pulses[down] * step_ns + pulse_ns
            self.array.reset_pulse(rows[down], cols[down], v, req.width_ns, req.reset_gate_mv / 1000, at_ns=at)
            self.counters.reset += down.size
            r_idx[down] += 1
            s_idx[down] = 0
        pulses[act] += 1
        codes[act], _, g[act] = self._read_g(rows[act], cols[act], v_read, first_read[act] + pulses[act] * step_ns)
        moved[act] = np.maximum(moved[act], np.abs(g[act] - g_start[act]))
    if n:
        self.array.advance_to_ns(int(slot_end[-1]))
    stuck = (status == CellResult.MAX_PULSES) & (pulses >= _STUCK_MIN_PULSES) & (moved <= tol)
    status[stuck] = CellResult.STUCK
    results = np.zeros(n, dtype=m.WV_RESULT)
    results["final_s"], results["final_code"], results["pulses"], results["status"] = g, codes, pulses, status
    res = m.WriteVerifyResult(self._now_us(), n, results)
    if aborted:
        raise AbortedError(result=res)
    return res


class ReferenceEngine(FirmwareEngine):
    """A `FirmwareEngine` on a `ReferenceArray` whose READ_BLOCK and WRITE_VERIFY run as first written."""

    _array_class = ReferenceArray

    @property
    def limits(self) -> BoardLimits:
        """Built from HELLO for every request, as at first."""
        return BoardLimits.from_hello(self.hello_info)

    def _handlers(self) -> dict:
        """Built for every request, as at first."""
        return self._build_handlers()

    def _build_handlers(self) -> dict:
        h = super()._build_handlers()
        for opcode, handler in list(h.items()):
            if handler == self._write_verify:
                h[opcode] = self._write_verify_reference
            elif handler == self._read_block:
                h[opcode] = self._read_block_reference
        return h

    def _pristine_form_steps(self, req, v_read: float, threshold: float):
        """FORM as first written: every pulse of the ramp in the loop, none taken at once."""
        return no_pristine_steps()

    def _read_g(
        self, rows: np.ndarray, cols: np.ndarray, v_read: float, at_ns: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        current = self._reference_override(rows, cols, v_read, self.array.read_current(rows, cols, v_read, at_ns))
        self.counters.reads += rows.size
        conv = self.chain.read.convert(current)
        g = self.chain.read.to_current(conv.codes) / v_read
        return conv.codes, conv.saturated, g

    def _write_verify_reference(
        self, req: m.WriteVerifyRequest
    ) -> m.WriteVerifyResult | tuple[m.WriteVerifyResult, Status]:
        return write_verify_reference(self, req)

    def _read_block_reference(self, req: m.ReadBlockRequest) -> m.ReadBlockResult:
        v = self._check_read_v(req.v_read_mv)
        rr, cc = np.meshgrid(
            np.arange(req.row0, req.row0 + req.nrows), np.arange(req.col0, req.col0 + req.ncols), indexing="ij"
        )
        codes, _, _ = self._read_g(rr.ravel(), cc.ravel(), v)
        rd = self.chain.read
        return m.ReadBlockResult(
            self._now_us(),
            req.v_read_mv,
            req.row0,
            req.col0,
            req.nrows,
            req.ncols,
            rd.amps_per_code,
            rd.offset_code,
            codes,
        )
