"""Board client: the typed operations (reads, pulses, FORM, I-V, write-verify, endurance stream) and their results.

The session layer beneath (handshake, same-seq retries, reset recovery) is `hil.hardware.session`;
its names are re-exported here so `from hil.hardware.board import Board, BoardResetError` keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from firmware_protocol import BoardError, Capability, Frame, LimitError, Status, StreamEnd, decode_payload
from firmware_protocol import messages as m
from firmware_protocol.limits import CLOCK_MAX_US
from hil.hardware.session import (
    NOISY_TRIES_FACTOR,
    BoardResetError,
    BoardSession,
    BoardTimeoutError,
    LinkStats,
    _Adaptive,
)
from hil.hardware.transport import DEFAULT_PORT, BoardConnectionError, ByteLink, open_link

__all__ = [  # the session names are re-exported: callers import them from here
    "Board",
    "BlockMeasurement",
    "BoardConnectionError",
    "BoardResetError",
    "BoardSession",
    "BoardTimeoutError",
    "CurrentCorrection",
    "EnduranceChunk",
    "FormOutcome",
    "LinkStats",
    "Measurement",
    "NOISY_TRIES_FACTOR",
    "PulseMeasurement",
    "PulseRamp",
    "SweepMeasurement",
    "WriteVerifyOutcome",
]


class CurrentCorrection(Protocol):
    """Host-side read-path correction (`ReadPathCalibration` from `rram board calibrate`)."""

    def apply(self, current_a: np.ndarray) -> np.ndarray: ...


def _mv(volts: float, what: str) -> int:
    if not np.isfinite(volts):
        raise ValueError(f"{what} must be a finite voltage, got {volts!r}")
    mv = int(round(volts * 1000))
    if not -32768 <= mv <= 32767:
        raise ValueError(f"{what} {volts} V is outside anything a board can apply")
    return mv


@dataclass(frozen=True)
class Measurement:
    """A read of one cell: raw code plus what it means."""

    timestamp_s: float
    code: int
    current_a: float
    conductance_s: float
    saturated: bool


@dataclass(frozen=True)
class BlockMeasurement:
    timestamp_s: float
    codes: np.ndarray  # (nrows, ncols) uint16
    current_a: np.ndarray
    conductance_s: np.ndarray
    saturated: np.ndarray


@dataclass(frozen=True)
class PulseMeasurement:
    timestamp_s: float
    code: int
    current_a: float


@dataclass(frozen=True)
class FormOutcome:
    timestamp_s: float
    formed: bool
    pulses: int
    v_final: float
    conductance_s: float


@dataclass(frozen=True)
class SweepMeasurement:
    timestamp_s: float
    voltage_v: np.ndarray
    current_a: np.ndarray


@dataclass(frozen=True)
class WriteVerifyOutcome:
    timestamp_s: float
    final_s: np.ndarray
    pulses: np.ndarray
    status: np.ndarray  # CellResult codes


@dataclass(frozen=True)
class EnduranceChunk:
    """One read point of an endurance stream: LRS/HRS of every cell after `cycle` cycles."""

    cycle: int
    timestamp_s: float
    lrs_s: np.ndarray  # (n_cells,) conductance after SET
    hrs_s: np.ndarray  # (n_cells,) conductance after RESET
    lrs_codes: np.ndarray
    hrs_codes: np.ndarray


@dataclass(frozen=True)
class PulseRamp:
    """Write-verify pulse ramps (volts): SET voltage and gate grow per SET pulse, RESET grows more negative."""

    set_v_start: float = 0.7
    set_v_stop: float = 1.6
    set_v_step: float = 0.02
    set_gate_start: float = 1.3
    set_gate_stop: float = 1.3
    set_gate_step: float = 0.0
    reset_v_start: float = -0.6
    reset_v_stop: float = -1.8
    reset_v_step: float = -0.02
    reset_gate: float = 3.0
    width_ns: int = 100


class Board(BoardSession):
    """A connected board (real or simulated), after a successful HELLO: the typed operations."""

    def __init__(
        self,
        link: ByteLink,
        *,
        port: str = "",
        timeout_s: float = 0.25,
        retries: int = 20,
        on_event: Callable[[Frame], None] | None = None,
        calibration: CurrentCorrection | None = None,
    ) -> None:
        # Read-path correction from `rram board calibrate`, applied to every current the board reports.
        self.calibration = calibration
        super().__init__(link, port=port, timeout_s=timeout_s, retries=retries, on_event=on_event)
        self._block = _Adaptive(m.max_block_cells(self.info.max_payload))
        self._wv = _Adaptive(self.limits.max_wv_batch)

    @classmethod
    def open(
        cls,
        url: str = DEFAULT_PORT,
        *,
        timeout_s: float = 0.25,
        retries: int = 20,
        on_event: Callable[[Frame], None] | None = None,
        calibration: CurrentCorrection | None = None,
    ) -> Board:
        """Open the link at `url` and handshake; the link is closed again if the handshake fails."""
        link = open_link(url)
        try:
            return cls(link, port=url, timeout_s=timeout_s, retries=retries, on_event=on_event, calibration=calibration)
        except BaseException:
            link.close()
            raise

    def _link_trouble(self) -> None:
        """Any request that needed several tries shows a lossy link: shrink every bulk transfer before it stalls."""
        self._block.failed()
        self._wv.failed()

    # ------------------------------------------------------------------------------ operations
    def heartbeat(self, watchdog_ms: int = 0) -> m.HeartbeatReply:
        """Feed the watchdog; a non-zero `watchdog_ms` sets its timeout (the keepalives follow it)."""
        reply = self.call(m.HeartbeatRequest(watchdog_ms))
        if watchdog_ms:
            self._watchdog_set = (reply.session_id, reply.watchdog_ms)
        return reply

    def counters(self) -> m.Counters:
        return self.call(m.CountersRequest())

    def advance_clock(self, seconds: float) -> float:
        """Simulator only: let `seconds` of device time pass at once; returns the board time (s)."""
        if not self.capabilities & Capability.VIRTUAL_CLOCK:
            raise ValueError("this board has no virtual clock (ADVANCE_CLOCK is for simulated boards)")
        if not 0 <= seconds <= CLOCK_MAX_US / 1e6:
            raise LimitError(
                f"cannot advance the clock by {seconds} s: use 0 to {CLOCK_MAX_US / 1e6:.6g} s (the board clock's range)"
            )
        reply = self.call(m.AdvanceClockRequest(int(round(seconds * 1e6))))
        return reply.timestamp_us / 1e6

    def wait(self, seconds: float) -> None:
        """Let time pass on the board: ADVANCE_CLOCK on a simulator, a real wait (with heartbeats) otherwise."""
        if self.capabilities & Capability.VIRTUAL_CLOCK:
            self.advance_clock(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, self.info.watchdog_ms / 2000))
            self.heartbeat()

    def abort(self) -> int:
        return self.call(m.AbortRequest()).stream_id

    def _correct(self, current: np.ndarray) -> np.ndarray:
        return current if self.calibration is None else self.calibration.apply(current)

    def _g(self, code: np.ndarray | int, apc: float, off: float, v_read_mv: int) -> tuple[np.ndarray, np.ndarray]:
        """Current and conductance from raw read codes, with the host-side read-path correction."""
        current = self._correct((np.asarray(code, dtype=float) - off) * apc)
        return current, current / (v_read_mv / 1000)

    def read(self, row: int, col: int, v_read: float = 0.1) -> Measurement:
        mv = _mv(v_read, "read voltage")
        res, status = self.call_status(m.ReadRequest(row, col, mv), allow=(Status.ADC_SATURATED,))
        i, g = self._g(res.code, res.amps_per_code, res.offset_code, mv)
        return Measurement(res.timestamp_us / 1e6, res.code, float(i), float(g), status == Status.ADC_SATURATED)

    def read_block(self, row0: int, col0: int, nrows: int, ncols: int, v_read: float = 0.1) -> BlockMeasurement:
        """Read a rectangle, split into as many READ_BLOCK requests as the payload size and the link allow."""
        mv = _mv(v_read, "read voltage")
        self.limits.check_block(row0, col0, nrows, ncols)
        codes = np.zeros((nrows, ncols), dtype=np.uint16)
        apc = off = 0.0
        ts = 0.0
        r = 0
        while r < nrows:
            per_row_cells = max(1, min(ncols, self._block.size))
            band = max(1, min(nrows - r, self._block.size // ncols)) if self._block.size >= ncols else 1
            c = 0
            while c < ncols:
                w = ncols if band > 1 else min(per_row_cells, ncols - c)
                before = self.stats.retries
                res = self.call(m.ReadBlockRequest(row0 + r, col0 + c, band, w, mv))
                if self.stats.retries - before <= 1:  # trouble already shrank it in _transact_raw
                    self._block.succeeded()
                codes[r : r + band, c : c + w] = res.codes.reshape(band, w)
                apc, off, ts = res.amps_per_code, res.offset_code, res.timestamp_us / 1e6
                c += w
            r += band
        i, g = self._g(codes, apc, off, mv)
        sat = (codes == 0) | (codes == (1 << self.info.adc_bits) - 1)
        return BlockMeasurement(ts, codes, i, g, sat)

    def _pulse(
        self, cls: type[m.SetRequest | m.ResetRequest], row: int, col: int, v: float, width_ns: int, v_gate: float
    ) -> PulseMeasurement:
        res = self.call(cls(row, col, _mv(v, "pulse voltage"), int(width_ns), _mv(v_gate, "gate voltage")))
        i = (res.i_code - res.offset_code) * res.amps_per_code
        return PulseMeasurement(res.timestamp_us / 1e6, res.i_code, float(i))

    def set_pulse(self, row: int, col: int, v: float, width_ns: int, v_gate: float) -> PulseMeasurement:
        return self._pulse(m.SetRequest, row, col, v, width_ns, v_gate)

    def reset_pulse(self, row: int, col: int, v: float, width_ns: int, v_gate: float = 3.0) -> PulseMeasurement:
        return self._pulse(m.ResetRequest, row, col, v, width_ns, v_gate)

    def form(
        self,
        row: int,
        col: int,
        v_start: float = 2.0,
        v_stop: float = 4.5,
        v_step: float = 0.1,
        width_ns: int = 1000,
        v_gate: float = 1.2,
        v_read: float = 0.1,
        g_formed: float = 5e-6,
    ) -> FormOutcome:
        mv = _mv(v_read, "read voltage")
        req = m.FormRequest(
            row,
            col,
            _mv(v_start, "FORM start voltage"),
            _mv(v_stop, "FORM stop voltage"),
            _mv(v_step, "FORM step"),
            int(width_ns),
            _mv(v_gate, "gate voltage"),
            mv,
            int(round(g_formed * 1e9)),
        )
        res = self.call(req)
        _, g = self._g(res.read_code, res.amps_per_code, res.offset_code, mv)
        return FormOutcome(res.timestamp_us / 1e6, bool(res.formed), res.pulses, res.v_final_mv / 1000, float(g))

    def iv_sweep(
        self,
        row: int,
        col: int,
        v_start: float,
        v_stop: float,
        n_points: int,
        width_ns: int = 1000,
        v_gate: float = 1.2,
        dc: bool = False,
    ) -> SweepMeasurement:
        req = m.IvSweepRequest(
            row,
            col,
            _mv(v_start, "sweep start"),
            _mv(v_stop, "sweep stop"),
            int(n_points),
            int(width_ns),
            _mv(v_gate, "gate voltage"),
            1 if dc else 0,
        )
        res = self.call(req)
        i = (res.codes.astype(float) - res.offset_code) * res.amps_per_code
        return SweepMeasurement(res.timestamp_us / 1e6, res.v_mv / 1000, i)

    def write_verify(
        self,
        rows: npt.ArrayLike,
        cols: npt.ArrayLike,
        targets_s: npt.ArrayLike,
        tol_s: npt.ArrayLike,
        max_pulses: int = 100,
        ramp: PulseRamp = PulseRamp(),
        v_read: float = 0.1,
    ) -> WriteVerifyOutcome:
        """On-board closed-loop programming of many cells, in batches the board, the link and the board's duration
        bound (PROTOCOL.md 7.5) accept. Bad cells or budgets are refused in one line before anything is sent."""
        rows, cols = self._cell_indices(rows, cols)
        n = rows.size
        if isinstance(max_pulses, bool) or int(max_pulses) != max_pulses or not 1 <= max_pulses <= 0xFFFF:
            raise LimitError(f"write-verify max_pulses {max_pulses!r}: use an integer from 1 to 65535")
        targets, tols = (self._per_cell(v, n, what) for v, what in ((targets_s, "targets_s"), (tol_s, "tol_s")))
        final, pulses, status = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.uint8)
        # cells per batch within the duration bound: each costs o + max_pulses x (width + 2 o) at worst (7.5)
        lim = self.limits
        per_cell_ns = lim.op_overhead_ns + int(max_pulses) * (int(ramp.width_ns) + 2 * lim.op_overhead_ns)
        by_duration = max(1, lim.max_request_ms * 1_000_000 // max(1, per_cell_ns))
        ts = 0.0
        i = 0
        while i < n:
            k = min(self._wv.size, n - i, by_duration)
            e = np.zeros(k, dtype=m.WV_ENTRY)
            e["row"], e["col"], e["target_s"], e["tol_s"], e["max_pulses"] = (
                rows[i : i + k],
                cols[i : i + k],
                targets[i : i + k],
                tols[i : i + k],
                max_pulses,
            )
            req = m.WriteVerifyRequest(
                _mv(v_read, "read voltage"),
                int(ramp.width_ns),
                _mv(ramp.set_v_start, "SET ramp start"),
                _mv(ramp.set_v_stop, "SET ramp stop"),
                _mv(ramp.set_v_step, "SET ramp step"),
                _mv(ramp.set_gate_start, "gate ramp start"),
                _mv(ramp.set_gate_stop, "gate ramp stop"),
                _mv(ramp.set_gate_step, "gate ramp step"),
                _mv(ramp.reset_v_start, "RESET ramp start"),
                _mv(ramp.reset_v_stop, "RESET ramp stop"),
                _mv(ramp.reset_v_step, "RESET ramp step"),
                _mv(ramp.reset_gate, "RESET gate"),
                k,
                e,
            )
            before = self.stats.retries
            res = self.call(req)
            if self.stats.retries - before <= 1:  # trouble already shrank it in _transact_raw
                self._wv.succeeded()
            r = res.results
            v = v_read
            final[i : i + k] = self._correct(r["final_s"].astype(float) * v) / v
            pulses[i : i + k], status[i : i + k] = r["pulses"], r["status"]
            ts = res.timestamp_us / 1e6
            i += k
        return WriteVerifyOutcome(ts, final, pulses, status)

    def _cell_indices(self, rows: npt.ArrayLike, cols: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Integer cell indices, each inside the array (LimitError naming the first outside: never wrapped to u16)."""
        r, c = np.asarray(rows), np.asarray(cols)
        if r.ndim != 1 or c.shape != r.shape:
            raise ValueError(f"rows and cols must be 1-D and of one length, got shapes {r.shape} and {c.shape}")
        for a in (r, c):
            whole = a.dtype.kind in "iu" or (a.dtype.kind == "f" and np.isfinite(a).all() and np.all(a == np.round(a)))
            if a.size and not whole:
                raise ValueError(f"cell indices must be integers, got {a.dtype} values such as {a.ravel()[0]!r}")
        bad = np.flatnonzero((r < 0) | (r >= self.rows) | (c < 0) | (c >= self.cols))
        if bad.size:
            self.limits.check_cell(int(r[bad[0]]), int(c[bad[0]]))
        return r.astype(np.int64), c.astype(np.int64)

    @staticmethod
    def _per_cell(value: npt.ArrayLike, n: int, what: str) -> np.ndarray:
        """One float per cell from a scalar or an array of n (one line if the count is wrong)."""
        a = np.asarray(value, dtype=float)
        if a.ndim and a.shape != (n,):
            raise ValueError(f"{what} has {a.size} values for {n} cells (give one, or one per cell)")
        return np.broadcast_to(a, (n,))

    # ------------------------------------------------------------------------------ endurance stream
    def endurance(
        self,
        row0: int,
        col0: int,
        nrows: int,
        ncols: int,
        n_cycles: int,
        read_every: int,
        set_v: float = 1.5,
        set_width_ns: int = 200,
        set_gate: float = 1.4,
        reset_v: float = -1.6,
        reset_width_ns: int = 200,
        reset_gate: float = 3.0,
        v_read: float = 0.1,
        cells_per_event: int = 0,
    ) -> Iterator[EnduranceChunk]:
        """Run an ENDURANCE stream and yield one chunk per read point, in order, with ack/resend."""
        mv_read = _mv(v_read, "read voltage")
        req = m.EnduranceRequest(
            row0,
            col0,
            nrows,
            ncols,
            int(n_cycles),
            int(read_every),
            _mv(set_v, "SET voltage"),
            int(set_width_ns),
            _mv(set_gate, "SET gate"),
            _mv(reset_v, "RESET voltage"),
            int(reset_width_ns),
            _mv(reset_gate, "RESET gate"),
            mv_read,
            int(cells_per_event),
        )
        self._pending.events.clear()
        started = self.call(req)
        sid, n_events, n_cells = started.stream_id, started.n_events, started.n_cells
        window = self.info.stream_window
        received: dict[int, m.EnduranceData | m.EnduranceEnd] = {}
        expected = 0  # next event number to deliver
        acked = 0
        point_parts: list[m.EnduranceData] = []
        finished = False
        idle_deadline = time.monotonic() + self.base_timeout_s * 4
        try:
            while not finished:
                while self._pending.events:
                    ev = self._pending.events.popleft()
                    msg = decode_payload(ev)
                    # only these two event types are queued (see BoardSession._pump)
                    if not isinstance(msg, (m.EnduranceData, m.EnduranceEnd)) or msg.stream_id != sid:
                        continue
                    if isinstance(msg, m.EnduranceEnd) and msg.reason != StreamEnd.COMPLETE:
                        raise BoardError(f"endurance stream ended early: {StreamEnd(msg.reason).name.lower()}")
                    if msg.event_no >= expected:
                        received[msg.event_no] = msg
                    idle_deadline = time.monotonic() + self.base_timeout_s * 4
                progressed = False
                while expected in received:
                    part = received.pop(expected)
                    expected += 1
                    progressed = True
                    if isinstance(part, m.EnduranceEnd):
                        finished = True
                        break
                    point_parts.append(part)
                    if sum(p.n for p in point_parts) == n_cells:
                        yield self._assemble(point_parts, mv_read)
                        point_parts = []
                if finished or (expected - acked >= max(1, window // 2)) or (progressed and expected == n_events + 1):
                    self.call(m.StreamAck(sid, expected))
                    acked = expected
                    continue
                if not self._pump(time.monotonic() + 0.05) and time.monotonic() > idle_deadline:
                    self.stats.timeouts += 1
                    self._stream_recover(sid, expected, acked)
                    acked = expected
                    idle_deadline = time.monotonic() + self.base_timeout_s * 4
                elif (self._pending.corrupt or (received and min(received) > expected)) and not self._pending.events:
                    # a damaged frame, or a gap (the line never reorders, so a later event means this one was lost)
                    self._pending.corrupt = False
                    if received and min(received) > expected or not received:
                        self._stream_recover(sid, expected, acked)
                        acked = expected
        except BaseException:
            if not finished:
                try:
                    self.abort()
                except (BoardError, BoardConnectionError, BoardResetError):
                    pass
            raise

    def _stream_recover(self, sid: int, expected: int, acked: int) -> None:
        """Nothing (valid) arrived: re-acknowledge, then ask for the missing event again."""
        self.stats.resends += 1
        self.call(m.StreamAck(sid, expected))
        try:
            self.call(m.StreamResend(sid, expected))
        except BoardError:
            pass  # not sent yet: the window was simply closed by a lost ack, now reopened

    def _assemble(self, parts: list[m.EnduranceData], v_read_mv: int) -> EnduranceChunk:
        parts.sort(key=lambda p: p.cell_offset)
        lrs = np.concatenate([p.lrs_codes for p in parts])
        hrs = np.concatenate([p.hrs_codes for p in parts])
        p0 = parts[0]
        _, g_l = self._g(lrs, p0.amps_per_code, p0.offset_code, v_read_mv)
        _, g_h = self._g(hrs, p0.amps_per_code, p0.offset_code, v_read_mv)
        return EnduranceChunk(p0.cycle, p0.timestamp_us / 1e6, g_l, g_h, lrs, hrs)
