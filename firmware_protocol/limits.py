"""Safety limits declared by the board in HELLO, and the checks every request must pass.

The host runs these checks before a request is encoded (nothing out of range is ever sent) and
the firmware runs the same checks again on what it receives (PROTOCOL.md 7): range checks first
(OUT_OF_RANGE on the board), then the duration bound (7.5), then the semantic checks of 7.4
(`SemanticLimitError`, BAD_ARGUMENT on the board). The board alone adds the checks that need its
state: stream state and the clock range (`check_clock`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from firmware_protocol.errors import LimitError
from firmware_protocol.messages import (
    AdvanceClockRequest,
    EnduranceRequest,
    FormRequest,
    HelloInfo,
    IvSweepRequest,
    Message,
    PulseRequest,
    ReadBlockRequest,
    ReadRequest,
    ResetRequest,
    SetRequest,
    WriteVerifyRequest,
    max_block_cells,
    max_event_cells,
    max_wv_entries,
)

# The board clock's range (PROTOCOL.md 3.8): no request may take it past this many microseconds
# (floor((2^63 - 1) / 1000), about 292 years), so a clock kept in signed 64-bit nanoseconds never
# overflows and every u64 timestamp_us is exact.
CLOCK_MAX_US = (2**63 - 1) // 1000
CLOCK_MAX_NS = CLOCK_MAX_US * 1000
# Stream numbering (PROTOCOL.md 7.4): event numbers are u32 and the final STREAM_ACK says n_events + 1.
MAX_STREAM_EVENTS = 0xFFFFFFFF - 1
MAX_STREAM_CELLS = 0xFFFF  # n_cells and cell_offset are u16

# Integer ranges of the struct format codes used in request payloads (the wire range of each field).
_INT_RANGES = {
    code: (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if code.islower() else (0, (1 << (8 * size)) - 1)
    for code, size in (("b", 1), ("B", 1), ("h", 2), ("H", 2), ("i", 4), ("I", 4), ("q", 8), ("Q", 8))
}


class SemanticLimitError(LimitError):
    """A request fails a semantic check of PROTOCOL.md 7.4 (e.g. a cell listed twice): BAD_ARGUMENT on the board."""


def _format_codes(fmt: str) -> list[str]:
    """One struct code per field of a message FORMAT ("16s" is one field)."""
    codes: list[str] = []
    count = ""
    for ch in fmt.lstrip("<>=!@"):
        if ch.isdigit():
            count += ch
            continue
        codes.extend([ch] if ch in "sp" else [ch] * int(count or 1))
        count = ""
    return codes


def check_wire_ranges(msg: Message) -> None:
    """Raise LimitError naming the first fixed field that does not fit its wire type (nothing would encode)."""
    names = [f.name for f in fields(msg) if f.metadata.get("array") is None]
    for name, code in zip(names, _format_codes(msg.FORMAT)):
        rng = _INT_RANGES.get(code)
        value = getattr(msg, name)
        if rng is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise LimitError(f"{type(msg).__name__}.{name} must be an integer, got {value!r}")
        if not rng[0] <= int(value) <= rng[1]:
            raise LimitError(
                f"{type(msg).__name__}.{name} = {int(value)} does not fit its wire field [{rng[0]}, {rng[1]}]"
            )


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.6g} s"


@dataclass(frozen=True)
class BoardLimits:
    """The envelope a request must stay inside (all voltages in mV, widths and durations in ns)."""

    rows: int
    cols: int
    set_v: tuple[int, int]
    reset_v: tuple[int, int]
    form_v: tuple[int, int]
    read_v: tuple[int, int]
    gate_v: tuple[int, int]
    width_min_ns: int
    width_max_ns: int
    width_step_ns: int
    max_payload: int
    max_wv_batch: int
    # Duration limits (7.5); the defaults are the widest the u32 wire fields allow (HelloInfo always sets them).
    op_overhead_ns: int = 0  # the duration rule's cost of one read, and of one pulse beyond its width
    max_request_ms: int = 0xFFFFFFFF  # the longest worst-case on-array time of one request
    max_hold_ns: int = 0xFFFFFFFF  # the longest DC I-V hold per point (6.8)

    @classmethod
    def from_hello(cls, h: HelloInfo) -> BoardLimits:
        return cls(
            rows=h.rows,
            cols=h.cols,
            set_v=(h.set_v_min_mv, h.set_v_max_mv),
            reset_v=(h.reset_v_min_mv, h.reset_v_max_mv),
            form_v=(h.form_v_min_mv, h.form_v_max_mv),
            read_v=(h.read_v_min_mv, h.read_v_max_mv),
            gate_v=(h.gate_v_min_mv, h.gate_v_max_mv),
            width_min_ns=h.width_min_ns,
            width_max_ns=h.width_max_ns,
            width_step_ns=h.width_step_ns,
            max_payload=h.max_payload,
            max_wv_batch=min(h.max_wv_batch, max_wv_entries(h.max_payload)),
            op_overhead_ns=h.op_overhead_ns,
            max_request_ms=h.max_request_ms,
            max_hold_ns=h.max_hold_ns,
        )

    # --- elementary checks -------------------------------------------------------------------
    def check_cell(self, row: int, col: int) -> None:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise LimitError(f"cell ({row}, {col}) is outside the {self.rows}x{self.cols} array")

    def check_block(self, row0: int, col0: int, nrows: int, ncols: int) -> None:
        if nrows < 1 or ncols < 1:
            raise LimitError(f"block {nrows}x{ncols} is empty")
        if row0 < 0 or col0 < 0 or row0 + nrows > self.rows or col0 + ncols > self.cols:
            raise LimitError(
                f"block rows {row0}:{row0 + nrows}, cols {col0}:{col0 + ncols} is outside the {self.rows}x{self.cols} array"
            )

    @staticmethod
    def check_voltage(what: str, mv: int, bounds: tuple[int, int]) -> None:
        lo, hi = bounds
        if not lo <= mv <= hi:
            raise LimitError(
                f"{what} {mv / 1000:.3f} V is outside the board's range [{lo / 1000:.3f}, {hi / 1000:.3f}] V"
            )

    def check_width(self, ns: int) -> None:
        if not self.width_min_ns <= ns <= self.width_max_ns:
            raise LimitError(f"pulse width {ns} ns is outside [{self.width_min_ns}, {self.width_max_ns}] ns")
        if ns % self.width_step_ns:
            raise LimitError(f"pulse width {ns} ns is not a multiple of the {self.width_step_ns} ns step")

    def check_gate(self, mv: int) -> None:
        self.check_voltage("gate voltage", mv, self.gate_v)

    def check_read(self, mv: int) -> None:
        self.check_voltage("read voltage", mv, self.read_v)

    @staticmethod
    def check_read_positive(mv: int) -> None:
        """PROTOCOL.md 7.4: a conductance needs a positive read voltage, even where read_v_min is 0."""
        if mv <= 0:
            raise SemanticLimitError(f"read voltage {mv / 1000:.3f} V must be positive")

    # --- durations (PROTOCOL.md 7.5) ------------------------------------------------------------
    def worst_case_ns(self, msg: Message) -> int:
        """Upper bound of the on-array time `msg` asks for, from its fields alone (exact integers).

        o = op_overhead_ns is charged for every read and once per pulse on top of its width; ENDURANCE
        counts its whole stream, ADVANCE_CLOCK the time it lets pass. The range checks must have passed.
        """
        o = self.op_overhead_ns
        if isinstance(msg, PulseRequest):
            return msg.width_ns + o
        if isinstance(msg, FormRequest):
            steps = (msg.v_stop_mv - msg.v_start_mv) // msg.v_step_mv + 1 if msg.v_step_mv > 0 else 0
            return steps * (msg.width_ns + o) + (steps + 1) * o
        if isinstance(msg, ReadRequest):
            return o
        if isinstance(msg, ReadBlockRequest):
            return msg.nrows * msg.ncols * o
        if isinstance(msg, IvSweepRequest):
            return msg.n_points * (self.iv_point_ns(msg) + o)
        if isinstance(msg, WriteVerifyRequest):
            pulses = int(np.sum(msg.entries["max_pulses"], dtype=np.int64))
            return msg.n * o + pulses * (msg.width_ns + 2 * o)
        if isinstance(msg, EnduranceRequest):
            points = msg.n_cycles // msg.read_every if msg.read_every else 0
            per_cell = msg.n_cycles * (msg.set_width_ns + msg.reset_width_ns + 2 * o) + 2 * points * o
            return msg.nrows * msg.ncols * per_cell
        if isinstance(msg, AdvanceClockRequest):
            return msg.microseconds * 1000
        return 0

    def iv_point_ns(self, msg: IvSweepRequest) -> int:
        """Width of one I-V point: the pulse width (mode 0) or the DC hold, never shorter than width_min (mode 1)."""
        return msg.width_ns if msg.mode == 0 else max(msg.width_ns, self.width_min_ns)

    def check_duration(self, msg: Message) -> None:
        """7.5: a request's worst case stays within max_request_ms (streams and ADVANCE_CLOCK are bounded otherwise)."""
        if isinstance(msg, AdvanceClockRequest):
            if msg.microseconds > CLOCK_MAX_US:
                raise LimitError(
                    f"ADVANCE_CLOCK of {msg.microseconds / 1e6:.6g} s is beyond the board clock's range "
                    f"({CLOCK_MAX_US / 1e6:.6g} s)"
                )
            return
        if isinstance(msg, EnduranceRequest):
            return
        worst = self.worst_case_ns(msg)
        if worst > self.max_request_ms * 1_000_000:
            raise LimitError(
                f"{type(msg).__name__} could take up to {_seconds(worst)} on the array, more than the board's "
                f"{self.max_request_ms / 1000:g} s per request: ask for less (fewer cells, pulses or points)"
            )

    def check_clock(self, msg: Message, clock_ns: int) -> None:
        """Board side (3.8): refuse a request whose worst case would take the clock past CLOCK_MAX_US."""
        worst = self.worst_case_ns(msg)
        if clock_ns + worst > CLOCK_MAX_NS:
            raise LimitError(
                f"{type(msg).__name__} could take up to {_seconds(worst)}: the board clock "
                f"({clock_ns / 1e9:.6g} s) would pass its range ({CLOCK_MAX_US / 1e6:.6g} s)"
            )

    # --- whole requests ----------------------------------------------------------------------
    def check(self, msg: Message, clock_ns: int | None = None) -> None:
        """Raise LimitError if `msg` would take the board outside its declared envelope (7.2, 7.5, 7.4).

        The board passes its clock (`clock_ns`) to add the clock-range check of 3.8 before the semantic ones.
        """
        self._check_ranges(msg)
        self.check_duration(msg)
        if clock_ns is not None:
            self.check_clock(msg, clock_ns)
        self._check_semantics(msg)
        check_wire_ranges(msg)  # last: the checks above name the problem better (a decoded request always fits)

    def _check_ranges(self, msg: Message) -> None:
        """The checks of PROTOCOL.md 7.2, in its order (OUT_OF_RANGE on the board)."""
        if isinstance(msg, (SetRequest, ResetRequest)) or type(msg) is PulseRequest:
            self.check_cell(msg.row, msg.col)
            if isinstance(msg, ResetRequest):
                self.check_voltage("RESET voltage", msg.v_mv, self.reset_v)
            else:
                self.check_voltage("SET voltage", msg.v_mv, self.set_v)
            self.check_width(msg.width_ns)
            self.check_gate(msg.gate_mv)
        elif isinstance(msg, FormRequest):
            self.check_cell(msg.row, msg.col)
            self.check_voltage("FORM start voltage", msg.v_start_mv, self.form_v)
            self.check_voltage("FORM stop voltage", msg.v_stop_mv, self.form_v)
            if msg.v_step_mv <= 0 or msg.v_stop_mv < msg.v_start_mv:
                raise LimitError("FORM ramp needs v_step > 0 and v_stop >= v_start")
            steps = (msg.v_stop_mv - msg.v_start_mv) // msg.v_step_mv + 1
            if steps > 0xFFFF:  # FormResult.pulses is a u16
                raise LimitError(f"FORM ramp of {steps} steps exceeds 65535 pulses: use a larger v_step")
            self.check_width(msg.width_ns)
            self.check_gate(msg.gate_mv)
            self.check_read(msg.v_read_mv)
        elif isinstance(msg, ReadRequest):
            self.check_cell(msg.row, msg.col)
            self.check_read(msg.v_read_mv)
        elif isinstance(msg, ReadBlockRequest):
            self.check_block(msg.row0, msg.col0, msg.nrows, msg.ncols)
            self.check_read(msg.v_read_mv)
            limit = max_block_cells(self.max_payload)
            if msg.nrows * msg.ncols > limit:
                raise LimitError(f"block of {msg.nrows * msg.ncols} cells exceeds {limit} cells per READ_BLOCK")
        elif isinstance(msg, IvSweepRequest):
            self._check_iv_sweep(msg)
        elif isinstance(msg, EnduranceRequest):
            self.check_block(msg.row0, msg.col0, msg.nrows, msg.ncols)
            if msg.n_cycles < 1 or msg.read_every < 1:
                raise LimitError("endurance needs n_cycles >= 1 and read_every >= 1")
            self.check_voltage("SET voltage", msg.set_v_mv, self.set_v)
            self.check_voltage("RESET voltage", msg.reset_v_mv, self.reset_v)
            self.check_width(msg.set_width_ns)
            self.check_width(msg.reset_width_ns)
            self.check_gate(msg.set_gate_mv)
            self.check_gate(msg.reset_gate_mv)
            self.check_read(msg.v_read_mv)
        elif isinstance(msg, WriteVerifyRequest):
            self._check_write_verify(msg)

    def _check_iv_sweep(self, msg: IvSweepRequest) -> None:
        self.check_cell(msg.row, msg.col)
        sweep = (self.reset_v[0], self.set_v[1])
        self.check_voltage("sweep start voltage", msg.v_start_mv, sweep)
        self.check_voltage("sweep stop voltage", msg.v_stop_mv, sweep)
        if not 2 <= msg.n_points <= 1024:
            raise LimitError(f"I-V sweep of {msg.n_points} points: use 2 to 1024")
        if msg.mode not in (0, 1):
            raise LimitError(f"I-V sweep mode {msg.mode}: 0 = pulsed, 1 = DC")
        if msg.mode == 0:
            self.check_width(msg.width_ns)
        elif msg.width_ns > self.max_hold_ns:
            raise LimitError(f"DC hold {msg.width_ns} ns per point exceeds the board's {self.max_hold_ns} ns")
        self.check_gate(msg.gate_mv)

    def _check_write_verify(self, msg: WriteVerifyRequest) -> None:
        if not 1 <= msg.n <= self.max_wv_batch:
            raise LimitError(f"write-verify batch of {msg.n} cells: use 1 to {self.max_wv_batch}")
        self.check_read(msg.v_read_mv)
        self.check_width(msg.width_ns)
        for what, mv in (("SET ramp start", msg.set_v_start_mv), ("SET ramp stop", msg.set_v_stop_mv)):
            self.check_voltage(what, mv, self.set_v)
        for what, mv in (("RESET ramp start", msg.reset_v_start_mv), ("RESET ramp stop", msg.reset_v_stop_mv)):
            self.check_voltage(what, mv, self.reset_v)
        for mv in (msg.set_gate_start_mv, msg.set_gate_stop_mv, msg.reset_gate_mv):
            self.check_gate(mv)
        if msg.set_v_step_mv < 0 or msg.set_gate_step_mv < 0 or msg.reset_v_step_mv > 0:
            raise LimitError("write-verify ramps must grow: SET steps >= 0, RESET step <= 0 (more negative)")
        e = msg.entries
        bad = (e["row"] >= self.rows) | (e["col"] >= self.cols)
        if bad.any():
            i = int(bad.argmax())
            self.check_cell(int(e["row"][i]), int(e["col"][i]))
        if (
            not (np.isfinite(e["target_s"]).all() and np.isfinite(e["tol_s"]).all())
            or (e["target_s"] <= 0).any()
            or (e["tol_s"] <= 0).any()
            or (e["max_pulses"] == 0).any()
        ):
            raise LimitError("write-verify entries need target > 0 S, tolerance > 0 S and max_pulses >= 1")

    def _check_semantics(self, msg: Message) -> None:
        """The checks of PROTOCOL.md 7.4 that need no board state (BAD_ARGUMENT on the board)."""
        if isinstance(msg, (ReadRequest, ReadBlockRequest, FormRequest, WriteVerifyRequest, EnduranceRequest)):
            self.check_read_positive(msg.v_read_mv)
        if isinstance(msg, WriteVerifyRequest):
            e = msg.entries
            flat = e["row"].astype(np.int64) * self.cols + e["col"].astype(np.int64)
            if np.unique(flat).size != flat.size:
                raise SemanticLimitError("write-verify batch lists a cell more than once")
        elif isinstance(msg, EnduranceRequest):
            if msg.read_every > msg.n_cycles:
                raise SemanticLimitError(f"read_every {msg.read_every} exceeds n_cycles {msg.n_cycles}: no read point")
            n_cells = msg.nrows * msg.ncols
            if n_cells > MAX_STREAM_CELLS:
                raise SemanticLimitError(f"endurance block of {n_cells} cells exceeds {MAX_STREAM_CELLS} cells")
            n_events = self.stream_events(msg)
            if n_events > MAX_STREAM_EVENTS:
                raise SemanticLimitError(
                    f"endurance run would send {n_events} data events, more than {MAX_STREAM_EVENTS}: read less often"
                )

    def stream_cells_per_event(self, msg: EnduranceRequest) -> int:
        """C of PROTOCOL.md 8: cells per data event (the frame's capacity, capped by cells_per_event)."""
        c = min(msg.nrows * msg.ncols, max_event_cells(self.max_payload))
        return min(c, msg.cells_per_event) if msg.cells_per_event else c

    def stream_events(self, msg: EnduranceRequest) -> int:
        """n_events = floor(n_cycles / read_every) * ceil(n_cells / C) (PROTOCOL.md 9.2)."""
        n_cells = msg.nrows * msg.ncols
        return (msg.n_cycles // msg.read_every) * math.ceil(n_cells / self.stream_cells_per_event(msg))
