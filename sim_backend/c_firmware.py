"""The C board firmware (firmware_protocol/c/) as the simulated board: built on demand, driven through ctypes.

`CFirmwareEngine` is a drop-in for `FirmwareEngine` (feed, poll, boot, export_state/import_state, array,
chain, config, counters, session_id, state, watchdog_ms, limits, hello_info): the protocol runs in the C
core, and its HAL calls come back here to the very same `RRAMArray` and `ReadChain` the Python firmware
drives, so both give the same bytes for the same requests on the same seed. Per-cell HAL calls map to
single-cell array calls at the virtual clock; READ_BLOCK, WRITE_VERIFY and ENDURANCE use the HAL's
optional fast paths, which make exactly the vectorised array calls of the Python firmware.

The library is compiled with the system C compiler (`$CC`, else `cc`) into a cache folder keyed by a hash
of the sources and flags (`$RRAM_C_FIRMWARE_CACHE`, else ~/.cache/rram-hil/c-firmware), under a file lock
so that parallel test processes never race.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from firmware_protocol import BoardState
from firmware_protocol import messages as m
from sim_backend.board_config import DEFAULT_BOARD, FIRMWARE_VERSION, BoardConfig
from sim_backend.device_model import VerifyBatch, VerifyRamps
from sim_backend.firmware import FirmwareEngine, PulseCounters
from sim_backend.read_chain import ReadChain

C_DIR = Path(__file__).resolve().parent.parent / "firmware_protocol" / "c"
SOURCES = ("rram_cobs.c", "rram_text.c", "rram_limits.c", "rram_fw.c", "rram_wv.c", "rram_stream.c")
HEADERS = ("include/rram_fw.h", "include/rram_hal.h", "src/rram_internal.h")
# No fused multiply-add: the float64 decisions must be the Python's bit for bit (README.md).
CFLAGS = ("-std=c99", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wextra", "-pedantic")
CACHE_ENV = "RRAM_C_FIRMWARE_CACHE"
_I64_MAX = 2**63 - 1
_U64_MAX = 2**64 - 1
_PULSE_FORM, _PULSE_SET, _PULSE_RESET, _PULSE_SWEEP = 0, 1, 2, 3
_DAC_PULSE, _DAC_READ = 0, 1


class CFirmwareUnavailable(ValueError):
    """The C firmware cannot be built here (no compiler, or it failed): the message says what to do instead."""


# ----------------------------------------------------------------------------------------------- building
def _compiler() -> str:
    cc = os.environ.get("CC") or "cc"
    path = shutil.which(cc)
    if path is None:
        raise CFirmwareUnavailable(
            f"no C compiler ({cc!r}) found to build the C firmware: install gcc (or set CC), or use firmware=python"
        )
    return path


def _source_hash(cc: str) -> str:
    h = hashlib.sha256()
    for rel in (*(f"src/{s}" for s in SOURCES), *HEADERS):
        h.update(rel.encode())
        h.update((C_DIR / rel).read_bytes())
    h.update(" ".join((cc, *CFLAGS)).encode())
    return h.hexdigest()[:20]


def library_path() -> Path:
    """The shared library of the current sources, compiled now if the cache lacks it (one-line errors)."""
    if not (C_DIR / "src" / SOURCES[0]).is_file():
        raise CFirmwareUnavailable(f"the C firmware sources are missing ({C_DIR}): use firmware=python")
    cc = _compiler()
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rram-hil" / "c-firmware")
    folder = root / _source_hash(cc)
    lib = folder / "librram_fw.so"
    if lib.is_file():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: no lock, a race only compiles twice
            pass
        if lib.is_file():
            return lib
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so")
        os.close(fd)
        cmd = [cc, *CFLAGS, f"-I{C_DIR / 'include'}", "-o", tmp, *(str(C_DIR / "src" / s) for s in SOURCES), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
            raise CFirmwareUnavailable(f"building the C firmware failed ({first}): use firmware=python")
        os.replace(tmp, lib)
    return lib


# ----------------------------------------------------------------------------------------------- ctypes layout
class _Config(ctypes.Structure):
    _fields_ = [
        ("board_id", ctypes.c_char * 16),
        ("fw_major", ctypes.c_uint8),
        ("fw_minor", ctypes.c_uint8),
        ("fw_patch", ctypes.c_uint8),
        ("capabilities", ctypes.c_uint32),
        ("rows", ctypes.c_uint16),
        ("cols", ctypes.c_uint16),
        ("dac_bits", ctypes.c_uint8),
        ("adc_bits", ctypes.c_uint8),
        *((name, ctypes.c_int16) for name in ("set_v_min_mv", "set_v_max_mv", "reset_v_min_mv", "reset_v_max_mv")),
        *((name, ctypes.c_int16) for name in ("form_v_min_mv", "form_v_max_mv", "read_v_min_mv", "read_v_max_mv")),
        ("gate_v_min_mv", ctypes.c_uint16),
        ("gate_v_max_mv", ctypes.c_uint16),
        *((name, ctypes.c_uint32) for name in ("width_min_ns", "width_max_ns", "width_step_ns", "max_compliance_na")),
        ("max_payload", ctypes.c_uint16),
        ("watchdog_ms", ctypes.c_uint16),
        ("stream_window", ctypes.c_uint8),
        ("max_wv_batch", ctypes.c_uint16),
        ("op_overhead_ns", ctypes.c_uint32),
        ("max_request_ms", ctypes.c_uint32),
        ("max_hold_ns", ctypes.c_uint32),
        ("response_cache", ctypes.c_uint8),
        ("read_ns", ctypes.c_uint32),
        ("pulse_overhead_ns", ctypes.c_uint32),
        ("read_max_code", ctypes.c_uint16),
        *((name, ctypes.c_double) for name in ("read_amps_per_code", "read_offset_code")),
        *((name, ctypes.c_double) for name in ("pulse_amps_per_code", "pulse_offset_code")),
    ]


class _Counters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("form", "set", "reset", "reads")]


_vp, _u8, _u16, _u32, _i16, _i64 = (
    ctypes.c_void_p,
    ctypes.c_uint8,
    ctypes.c_uint16,
    ctypes.c_uint32,
    ctypes.c_int16,
    ctypes.c_int64,
)
_P_u8, _P_u16, _P_u32, _P_i64 = (ctypes.POINTER(t) for t in (_u8, _u16, _u32, _i64))
_HAL_CALLS: list[tuple[str, Any]] = [
    ("set_dac_mv", ctypes.CFUNCTYPE(None, _vp, _u8, _i16)),
    ("set_gate_mv", ctypes.CFUNCTYPE(None, _vp, _u16)),
    ("select_cell", ctypes.CFUNCTYPE(None, _vp, _u16, _u16)),
    ("pulse", ctypes.CFUNCTYPE(_u16, _vp, _u8, _u32, _P_u8, _P_u32)),
    ("adc_read", ctypes.CFUNCTYPE(_u16, _vp, _P_u8)),
    ("clock_us", ctypes.CFUNCTYPE(ctypes.c_uint64, _vp)),
    ("uart_read", ctypes.CFUNCTYPE(ctypes.c_long, _vp, _P_u8, ctypes.c_size_t)),
    ("uart_write", ctypes.CFUNCTYPE(None, _vp, _P_u8, ctypes.c_size_t)),
    ("watchdog_kick", ctypes.CFUNCTYPE(None, _vp)),
    ("random_u32", ctypes.CFUNCTYPE(_u32, _vp)),
    ("now_ns", ctypes.CFUNCTYPE(_i64, _vp)),
    ("complete_at_ns", ctypes.CFUNCTYPE(None, _vp, _i64)),
    ("advance_to_ns", ctypes.CFUNCTYPE(None, _vp, _i64)),
    ("advance_ns", ctypes.CFUNCTYPE(ctypes.c_int, _vp, _i64)),
    ("is_formed", ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u16, _u16)),
    ("read_block", ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u16, _u16, _u16, _u16, _i16, _P_u16)),
    (
        "cycle_block",
        ctypes.CFUNCTYPE(
            ctypes.c_int,
            _vp,
            _u16,
            _u16,
            _u16,
            _u16,
            _u32,
            _u32,
            _i16,
            _u32,
            _u16,
            _i16,
            _u32,
            _u16,
            _i16,
            _P_u16,
            _P_u16,
        ),
    ),
    ("wv_begin", ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u16, _P_u16, _P_u16, _P_i64, _P_u8, _u16, _P_u16)),
    ("wv_round", ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u16, _P_u8, _P_u16, _P_u16)),
    ("wv_retire", ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u16, _P_u8)),
    ("wv_end", ctypes.CFUNCTYPE(None, _vp)),
]
# Fast paths a test can switch off to run the core's own per-cell loops on the simulator.
FAST_PATHS = ("read_block", "cycle_block", "wv_begin", "wv_round", "wv_retire", "wv_end")


class _Hal(ctypes.Structure):
    _fields_ = [("ctx", _vp), *_HAL_CALLS]


_LIB: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """The C firmware library (built on first use), with its function signatures declared."""
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(str(library_path()))
        lib.rram_fw_sizeof.restype = ctypes.c_size_t
        lib.rram_fw_init.argtypes = [_vp, ctypes.POINTER(_Config), ctypes.POINTER(_Hal)]
        lib.rram_fw_error.restype = ctypes.c_char_p
        lib.rram_fw_error.argtypes = [_vp]
        lib.rram_fw_feed.argtypes = [_vp, ctypes.c_char_p, ctypes.c_size_t]
        for name in ("rram_fw_boot", "rram_fw_poll"):
            getattr(lib, name).argtypes = [_vp]
        lib.rram_fw_copy.argtypes = [_vp, _vp]
        lib.rram_fw_session_id.restype = _u32
        lib.rram_fw_state.restype = _u8
        lib.rram_fw_watchdog_ms.restype = _u16
        lib.rram_fw_stream_ids.restype = _u16
        lib.rram_fw_set_stream_ids.argtypes = [_vp, _u16]
        lib.rram_fw_counters_of.restype = ctypes.POINTER(_Counters)
        lib.rram_fw_hello_info.argtypes = [_vp, ctypes.c_char_p]
        lib.rram_fw_cache_seqs.restype = ctypes.c_size_t
        lib.rram_fw_cache_seqs.argtypes = [_vp, ctypes.POINTER(_u16)]
        for name in ("rram_fw_session_id", "rram_fw_state", "rram_fw_watchdog_ms", "rram_fw_stream_ids"):
            getattr(lib, name).argtypes = [_vp]
        lib.rram_fw_counters_of.argtypes = [_vp]
        _LIB = lib
    return _LIB


def c_firmware_available() -> str | None:
    """None when the C firmware can be built and loaded here, else the one-line reason it cannot."""
    try:
        load_library()
    except (CFirmwareUnavailable, OSError) as exc:
        return str(exc)
    return None


# ----------------------------------------------------------------------------------------------- the engine
class _CounterView:
    """`PulseCounters` of the C core (form, set, reset, reads): read and set like the Python firmware's."""

    def __init__(self, engine: CFirmwareEngine) -> None:
        self._engine = engine

    def _c(self) -> _Counters:
        return self._engine._lib.rram_fw_counters_of(self._engine._mem).contents

    def __getattr__(self, name: str) -> int:
        if name in ("form", "set", "reset", "reads"):
            return int(getattr(self._c(), name))
        raise AttributeError(name)

    def __setattr__(self, name: str, value: int) -> None:
        if name in ("form", "set", "reset", "reads"):
            setattr(self._c(), name, min(max(int(value), 0), _U64_MAX))  # the board's u64 counters saturate
        else:
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[int, int, int, int]:
        c = self._c()
        return int(c.form), int(c.set), int(c.reset), int(c.reads)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (_CounterView, PulseCounters)):
            return self._values() == (other.form, other.set, other.reset, other.reads)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        form, set_, reset, reads = self._values()
        return f"PulseCounters(form={form}, set={set_}, reset={reset}, reads={reads})"


class CFirmwareEngine(FirmwareEngine):
    """The board's firmware in C (firmware_protocol/c/) behind the FirmwareEngine interface.

    It shares FirmwareEngine's public interface only (feed, poll, boot, export/import_state, hello_info,
    limits, ...); the protocol runs in the C core, whose HAL calls this object's RRAMArray and ReadChain.
    """

    def __init__(
        self,
        config: BoardConfig = DEFAULT_BOARD,
        wall_clock: Callable[[], float] = time.monotonic,
        poll_input: Callable[[], bytes] | None = None,
        fast_paths: bool = True,
    ) -> None:
        self.config = config
        self._limits_cache = None
        self._handler_cache = None
        self.poll_input = poll_input
        self._clock = wall_clock
        self.array = self._array_class(config.rows, config.cols, config.device, seed=config.seed)
        self.chain = ReadChain(config.read_chain, seed=config.seed)
        self._boots = 0
        self._setup(fast_paths)
        self.boot()

    def _setup(self, fast_paths: bool) -> None:
        """The C engine's memory, HAL and configuration (no boot)."""
        self._lib = load_library()
        self._fast_paths = fast_paths
        self._mem = ctypes.create_string_buffer(self._lib.rram_fw_sizeof())
        self._out = bytearray()
        self._dac = [0, 0]
        self._gate = 0
        self._cell = (0, 0)
        self._at: int | None = None
        self._pending_in = b""
        self._wv: tuple[VerifyBatch, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._hal = self._make_hal(fast_paths)
        self._cfg = self._make_config()
        if self._lib.rram_fw_init(self._mem, ctypes.byref(self._cfg), ctypes.byref(self._hal)) != 0:
            raise ValueError(f"C firmware: {self._lib.rram_fw_error(self._mem).decode()} (or use firmware=python)")
        self.counters = _CounterView(self)  # type: ignore[assignment]

    def _make_config(self) -> _Config:
        c, rd, pl = self.config, self.chain.read, self.chain.pulse
        board_id = c.board_id.encode("ascii", errors="replace")[:16]
        return _Config(
            board_id=board_id,
            fw_major=FIRMWARE_VERSION[0],
            fw_minor=FIRMWARE_VERSION[1],
            fw_patch=FIRMWARE_VERSION[2],
            capabilities=int(c.capabilities),
            rows=c.rows,
            cols=c.cols,
            dac_bits=c.dac_bits,
            adc_bits=c.adc_bits,
            set_v_min_mv=c.set_v_mv[0],
            set_v_max_mv=c.set_v_mv[1],
            reset_v_min_mv=c.reset_v_mv[0],
            reset_v_max_mv=c.reset_v_mv[1],
            form_v_min_mv=c.form_v_mv[0],
            form_v_max_mv=c.form_v_mv[1],
            read_v_min_mv=c.read_v_mv[0],
            read_v_max_mv=c.read_v_mv[1],
            gate_v_min_mv=c.gate_v_mv[0],
            gate_v_max_mv=c.gate_v_mv[1],
            width_min_ns=c.width_min_ns,
            width_max_ns=c.width_max_ns,
            width_step_ns=c.width_step_ns,
            max_compliance_na=c.max_compliance_na,
            max_payload=c.max_payload,
            watchdog_ms=c.watchdog_ms,
            stream_window=c.stream_window,
            max_wv_batch=c.max_wv_batch,
            op_overhead_ns=self.array.op_overhead_ns,
            max_request_ms=c.max_request_ms,
            max_hold_ns=c.max_hold_ns,
            response_cache=c.response_cache,
            read_ns=self.array.read_ns,
            pulse_overhead_ns=self.array.pulse_overhead_ns,
            read_max_code=rd.max_code,
            read_amps_per_code=rd.amps_per_code,
            read_offset_code=rd.offset_code,
            pulse_amps_per_code=pl.amps_per_code,
            pulse_offset_code=pl.offset_code,
        )

    # ------------------------------------------------------------------------- the interface
    def boot(self) -> None:
        """Power-up or reset: new session id, empty cache, no stream, handshake required, EV_BOOT sent."""
        self._boots += 1
        self._out.clear()
        self._lib.rram_fw_boot(self._mem)

    def feed(self, data: bytes) -> bytes:
        """Consume bytes from the host; return every byte the board sends in reaction."""
        data = bytes(data)
        self._lib.rram_fw_feed(self._mem, data, len(data))
        return self._take()

    def poll(self) -> bytes:
        """Let the link-side clock run: fire the watchdog if due, flush pending stream events."""
        self._lib.rram_fw_poll(self._mem)
        return self._take()

    @property
    def hello_info(self) -> m.HelloInfo:
        buf = ctypes.create_string_buffer(93)
        self._lib.rram_fw_hello_info(self._mem, buf)
        return m.HelloInfo.decode(buf.raw)

    @property
    def session_id(self) -> int:  # type: ignore[override]
        return int(self._lib.rram_fw_session_id(self._mem))

    @property
    def state(self) -> BoardState:  # type: ignore[override]
        return BoardState(self._lib.rram_fw_state(self._mem))

    @property
    def watchdog_ms(self) -> int:  # type: ignore[override]
        return int(self._lib.rram_fw_watchdog_ms(self._mem))

    @property
    def _stream_ids(self) -> int:
        return int(self._lib.rram_fw_stream_ids(self._mem))

    @_stream_ids.setter
    def _stream_ids(self, value: int) -> None:
        self._lib.rram_fw_set_stream_ids(self._mem, value)

    @property
    def _cache(self) -> dict[int, None]:  # type: ignore[override]
        """Sequence numbers in the response cache, oldest first (what the tests look at)."""
        seqs = (_u16 * 64)()
        n = self._lib.rram_fw_cache_seqs(self._mem, seqs)
        return dict.fromkeys(seqs[:n])

    def __deepcopy__(self, memo: dict[int, Any]) -> CFirmwareEngine:
        new = CFirmwareEngine.__new__(CFirmwareEngine)
        memo[id(self)] = new
        new.config = self.config
        new._limits_cache = None
        new._handler_cache = None
        new.poll_input = copy.deepcopy(self.poll_input, memo)
        new._clock = copy.deepcopy(self._clock, memo)
        new.array = copy.deepcopy(self.array, memo)
        new.chain = copy.deepcopy(self.chain, memo)
        new._boots = self._boots
        new._setup(self._fast_paths)
        self._lib.rram_fw_copy(new._mem, self._mem)
        new._out = bytearray(self._out)
        return new

    # ------------------------------------------------------------------------- the HAL (rram_hal.h)
    def _make_hal(self, fast_paths: bool) -> _Hal:
        hal = _Hal()
        self._callbacks: list[Any] = []  # kept alive as long as the engine
        for name, proto in _HAL_CALLS:
            fn = getattr(self, f"_hal_{name}", None)
            if fn is None or (not fast_paths and name in FAST_PATHS):
                continue
            cb = proto(fn)
            self._callbacks.append(cb)
            setattr(hal, name, cb)
        return hal

    def _hal_set_dac_mv(self, ctx: int, channel: int, mv: int) -> None:
        self._dac[channel] = mv

    def _hal_set_gate_mv(self, ctx: int, mv: int) -> None:
        self._gate = mv

    def _hal_select_cell(self, ctx: int, row: int, col: int) -> None:
        self._cell = (row, col)

    def _take_at(self) -> np.ndarray | None:
        at, self._at = self._at, None
        return None if at is None else np.array([at], dtype=np.int64)

    def _hal_pulse(self, ctx: int, kind: int, width_ns: int, hit: Any, peak: Any) -> int:
        r, c = np.array([self._cell[0]]), np.array([self._cell[1]])
        v, gate = self._dac[_DAC_PULSE] / 1000, self._gate / 1000
        a = self.array
        if kind == _PULSE_FORM:
            current = a.form(r, c, v, width_ns, gate)
        elif kind == _PULSE_SET:
            current = a.set_pulse(r, c, v, width_ns, gate, at_ns=self._take_at())
        elif kind == _PULSE_RESET:
            current = a.reset_pulse(r, c, v, width_ns, gate, at_ns=self._take_at())
        else:
            current = a.iv_sweep(r, c, np.array([self._dac[_DAC_PULSE]], dtype=np.int16) / 1000, width_ns, gate)[:, 0]
        peak_a = float(np.max(np.abs(current)))
        if np.any(np.abs(current) > self.config.max_compliance_na * 1e-9):
            hit[0] = 1
            peak[0] = int(f"{peak_a * 1e6:.1f}".replace(".", ""))  # the text's digits, as the Python words it
            return 0
        return int(self.chain.pulse.codes(current)[0])

    def _hal_adc_read(self, ctx: int, saturated: Any) -> int:
        r, c = np.array([self._cell[0]]), np.array([self._cell[1]])
        v = self._dac[_DAC_READ] / 1000
        current = self.array.read_current(r, c, v, self._take_at())
        conv = self.chain.read.convert(self._reference_override(r, c, v, current))
        saturated[0] = int(conv.saturated[0])
        return int(conv.codes[0])

    def _hal_clock_us(self, ctx: int) -> int:
        return max(0, int(round(self._clock() * 1e6)))

    def _hal_uart_read(self, ctx: int, buf: Any, size: int) -> int:
        if self.poll_input is None and not self._pending_in:
            return -1  # the board cannot hear its input during a request (3.7)
        data = self._pending_in or (self.poll_input() if self.poll_input is not None else b"")
        chunk, self._pending_in = data[:size], data[size:]
        ctypes.memmove(buf, chunk, len(chunk))
        return len(chunk)

    def _hal_uart_write(self, ctx: int, buf: Any, n: int) -> None:
        self._out += ctypes.string_at(buf, n)

    def _hal_random_u32(self, ctx: int) -> int:
        rng = np.random.default_rng([self.config.seed, self._boots, 0xB007])
        return int(rng.integers(1, 2**32))

    def _hal_now_ns(self, ctx: int) -> int:
        return self.array.clock_ns

    def _hal_complete_at_ns(self, ctx: int, t_ns: int) -> None:
        self._at = int(t_ns)

    def _hal_advance_to_ns(self, ctx: int, t_ns: int) -> None:
        self.array.advance_to_ns(int(t_ns))

    def _hal_advance_ns(self, ctx: int, ns: int) -> int:
        try:
            self.array.advance_ns(int(ns))
        except ValueError:
            return -1
        return 0

    def _hal_is_formed(self, ctx: int, row: int, col: int) -> int:
        return int(self.array.formed[row * self.config.cols + col])

    @staticmethod
    def _put(ptr: Any, values: np.ndarray) -> None:
        arr = np.ascontiguousarray(values, dtype=np.uint16)
        ctypes.memmove(ptr, arr.ctypes.data, arr.nbytes)

    def _hal_read_block(self, ctx: int, row0: int, col0: int, nrows: int, ncols: int, v_mv: int, codes: Any) -> int:
        try:
            v = v_mv / 1000
            rr = np.repeat(np.arange(row0, row0 + nrows), ncols)  # row-major, as FirmwareEngine._read_block
            cc = np.tile(np.arange(col0, col0 + ncols), nrows)
            current = self._reference_override(rr, cc, v, self.array.read_current(rr, cc, v))
            self._put(codes, self.chain.read.convert(current).codes)
        except Exception:
            return -1
        return 0

    def _hal_cycle_block(self, ctx: int, *args: Any) -> int:
        row0, col0, nrows, ncols, n_cycles, read_every, set_v, set_w, set_g, rst_v, rst_w, rst_g, v_read, lrs, hrs = (
            args
        )
        try:
            rr, cc = np.meshgrid(np.arange(row0, row0 + nrows), np.arange(col0, col0 + ncols), indexing="ij")
            res = self.array.cycle(
                rr.ravel(),
                cc.ravel(),
                n_cycles,
                read_every,
                set_v / 1000,
                set_w,
                set_g / 1000,
                rst_v / 1000,
                rst_w,
                rst_g / 1000,
                v_read / 1000,
            )
            rd = self.chain.read
            if res.lrs_current.size:
                self._put(lrs, rd.codes(res.lrs_current).ravel())
                self._put(hrs, rd.codes(res.hrs_current).ravel())
        except Exception:
            return -1
        return 0

    def _adc_codes(self, pos: np.ndarray, current: np.ndarray, ref: np.ndarray, ref_current: np.ndarray) -> np.ndarray:
        """The read chain of `firmware._ReadAdc` (reference resistors in place of their cells), without counting."""
        r = ref[pos]
        if np.count_nonzero(r):
            current = current.copy()
            current[r] = ref_current[pos[r]]
        rd = self.chain.read
        if np.count_nonzero(np.isfinite(current)) != current.size:
            raise ValueError(f"{rd.config.name} range: currents must be finite")
        raw = np.rint(rd.true_offset_code + current / rd.true_amps_per_code)
        return np.minimum(np.maximum(raw, 0), rd.max_code).astype(np.uint16)

    def _hal_wv_begin(
        self, ctx: int, n: int, rows_p: Any, cols_p: Any, first_p: Any, req_p: Any, levels: int, codes: Any
    ) -> int:
        try:
            rows = np.ctypeslib.as_array(rows_p, (n,)).astype(np.int64)
            cols = np.ctypeslib.as_array(cols_p, (n,)).astype(np.int64)
            first = np.ctypeslib.as_array(first_p, (n,)).astype(np.int64)
            req = m.WriteVerifyRequest._STRUCT.unpack(ctypes.string_at(req_p, 28))
            v_read_mv, width, sv0, sv1, sdv, sg0, sg1, sdg, rv0, rv1, rdv = req[:11]
            k = np.arange(levels)  # as FirmwareEngine._write_verify_batch: arange(max(max_pulses))
            ramps = VerifyRamps(
                width_ns=float(width),
                set_v=np.minimum(sv0 + k * sdv, sv1) / 1000,
                set_gate=np.minimum(sg0 + k * sdg, sg1) / 1000,
                reset_v=np.maximum(rv0 + k * rdv, rv1) / 1000,
            )
            v_read = v_read_mv / 1000
            wired = self._reference_override(rows, cols, v_read, np.full(rows.size, np.nan))
            ref = ~np.isnan(wired)
            batch = self.array.verify_batch(rows, cols, first, ramps)
            slot = np.arange(n)
            self._wv = (batch, slot, ref, wired)
            self._put(codes, self._adc_codes(slot, batch.begin(v_read), ref, wired))
        except Exception:
            return -1
        return 0

    def _hal_wv_round(self, ctx: int, n: int, up_p: Any, level_p: Any, codes: Any) -> int:
        try:
            assert self._wv is not None
            batch, slot, ref, wired = self._wv
            up = np.ctypeslib.as_array(up_p, (n,)).astype(bool)
            level = np.ctypeslib.as_array(level_p, (n,)).astype(np.int64)
            self._put(codes, self._adc_codes(slot, batch.pulse_and_read(up, level), ref, wired))
        except Exception:
            return -1
        return 0

    def _hal_wv_retire(self, ctx: int, n: int, keep_p: Any) -> int:
        try:
            assert self._wv is not None
            batch, slot, ref, wired = self._wv
            keep = np.ctypeslib.as_array(keep_p, (n,)).astype(bool)
            batch.retire(keep)
            self._wv = (batch, slot[keep], ref, wired)
        except Exception:
            return -1
        return 0

    def _hal_wv_end(self, ctx: int) -> None:
        if self._wv is not None:
            batch, self._wv = self._wv[0], None
            batch.close()


def make_engine(
    firmware: str, config: BoardConfig = DEFAULT_BOARD, wall_clock: Callable[[], float] | None = None
) -> FirmwareEngine:
    """A board firmware by name: 'python' (FirmwareEngine) or 'c' (CFirmwareEngine); ValueError otherwise."""
    kw: dict[str, Any] = {} if wall_clock is None else {"wall_clock": wall_clock}
    if firmware == "python":
        return FirmwareEngine(config, **kw)
    if firmware == "c":
        return CFirmwareEngine(config, **kw)
    raise ValueError(f"unknown firmware {firmware!r}: use 'python' or 'c'")
