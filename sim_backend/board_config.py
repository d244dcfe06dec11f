"""Configuration of a simulated board: identity, geometry, declared limits and firmware settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_protocol import MAX_PAYLOAD, Capability
from sim_backend.device_params import DeviceParams
from sim_backend.read_chain import ReadChainConfig

FIRMWARE_VERSION = (1, 0, 0)


@dataclass(frozen=True)
class BoardConfig:
    """What the simulated board declares in HELLO and how its firmware behaves.

    Limits are typical of a bench board for 1T1R HfO2 arrays: SET up to 3 V, RESET down to -3 V,
    FORM up to 5 V, reads up to 0.3 V, gate 0-3.3 V (the NMOS sets a compliance up to ~500 uA),
    pulses from 10 ns to 1 ms on a 10 ns DAC timer grid.
    """

    rows: int = 64
    cols: int = 64
    seed: int = 0
    board_id: str = "SIM-RRAM"
    capabilities: Capability = (
        Capability.WRITE_VERIFY
        | Capability.STREAMING
        | Capability.VIRTUAL_CLOCK
        | Capability.IV_SWEEP
        | Capability.LIFETIME_COUNTERS
    )
    dac_bits: int = 12
    adc_bits: int = 16
    set_v_mv: tuple[int, int] = (0, 3000)
    reset_v_mv: tuple[int, int] = (-3000, 0)
    form_v_mv: tuple[int, int] = (0, 5000)
    read_v_mv: tuple[int, int] = (0, 300)
    gate_v_mv: tuple[int, int] = (0, 3300)
    width_min_ns: int = 10
    width_max_ns: int = 1_000_000
    width_step_ns: int = 10
    max_compliance_na: int = 500_000
    max_payload: int = MAX_PAYLOAD
    watchdog_ms: int = 2000
    stream_window: int = 8
    max_wv_batch: int = 512
    # Duration limits (PROTOCOL.md 7.5): the longest worst-case on-array time of one request, the longest DC
    # I-V hold per point. The per-operation cost of the duration rule comes from the device's timing.
    max_request_ms: int = 60_000
    max_hold_ns: int = 10_000_000
    response_cache: int = 16
    device: DeviceParams = field(default_factory=DeviceParams)
    read_chain: ReadChainConfig = field(default_factory=ReadChainConfig)
    # Calibration fixture: precision resistors (row, col, ohms) wired in place of these cells; reads of
    # them return V/R through the true read chain (no RRAM physics), for `rram board calibrate`.
    reference_cells: tuple[tuple[int, int, float], ...] = ()

    def __post_init__(self) -> None:
        if not (1 <= self.rows <= 4096 and 1 <= self.cols <= 4096):
            raise ValueError(f"array size {self.rows}x{self.cols}: rows and cols must be 1..4096")
        seen: set[tuple[int, int]] = set()
        for row, col, ohms in self.reference_cells:
            if not (0 <= row < self.rows and 0 <= col < self.cols):
                raise ValueError(f"reference cell ({row}, {col}) is outside the {self.rows}x{self.cols} array")
            if not (ohms > 0 and ohms != float("inf")):
                raise ValueError(f"reference cell ({row}, {col}): resistance must be positive and finite, got {ohms!r}")
            if (row, col) in seen:
                raise ValueError(f"reference cell ({row}, {col}) is given twice")
            seen.add((row, col))
        if len(self.board_id.encode("ascii", errors="replace")) > 16:
            raise ValueError(f"board id {self.board_id!r} is longer than 16 characters")


DEFAULT_BOARD = BoardConfig()  # the default argument of the engine and sim:// parser (frozen, so shared)
