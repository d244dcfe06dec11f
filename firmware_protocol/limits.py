"""Safety limits declared by the board in HELLO, and the checks every request must pass.

The host runs these checks before a request is encoded (nothing out of range is ever sent) and
the firmware runs the same checks again on what it receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_protocol.errors import LimitError
from firmware_protocol.messages import (
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
    max_wv_entries,
)


@dataclass(frozen=True)
class BoardLimits:
    """The envelope a request must stay inside (all voltages in mV, widths in ns)."""

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
        if mv <= 0:
            raise LimitError(f"read voltage {mv / 1000:.3f} V must be positive")

    # --- whole requests ----------------------------------------------------------------------
    def check(self, msg: Message) -> None:
        """Raise LimitError if `msg` would take the board outside its declared envelope."""
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
            self.check_gate(msg.gate_mv)
        elif isinstance(msg, EnduranceRequest):
            self.check_block(msg.row0, msg.col0, msg.nrows, msg.ncols)
            if msg.n_cycles < 1 or not 1 <= msg.read_every <= msg.n_cycles:
                raise LimitError("endurance needs n_cycles >= 1 and 1 <= read_every <= n_cycles")
            if msg.nrows * msg.ncols > 0xFFFF:
                raise LimitError(f"endurance block of {msg.nrows * msg.ncols} cells exceeds 65535 cells")
            if (msg.n_cycles // msg.read_every) * msg.nrows * msg.ncols >= 0xFFFFFFFF:
                raise LimitError("endurance run would need more than 2^32 data events: read less often")
            self.check_voltage("SET voltage", msg.set_v_mv, self.set_v)
            self.check_voltage("RESET voltage", msg.reset_v_mv, self.reset_v)
            self.check_width(msg.set_width_ns)
            self.check_width(msg.reset_width_ns)
            self.check_gate(msg.set_gate_mv)
            self.check_gate(msg.reset_gate_mv)
            self.check_read(msg.v_read_mv)
        elif isinstance(msg, WriteVerifyRequest):
            self._check_write_verify(msg)

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
        flat = e["row"].astype(np.int64) * self.cols + e["col"].astype(np.int64)
        if np.unique(flat).size != flat.size:
            raise LimitError("write-verify batch lists a cell more than once")
        if (
            not (np.isfinite(e["target_s"]).all() and np.isfinite(e["tol_s"]).all())
            or (e["target_s"] <= 0).any()
            or (e["tol_s"] <= 0).any()
            or (e["max_pulses"] == 0).any()
        ):
            raise LimitError("write-verify entries need target > 0 S, tolerance > 0 S and max_pulses >= 1")
