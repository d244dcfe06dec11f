"""Fuzzer: corrupted request frames through FrameDecoder and FirmwareEngine.feed; residual rate of the frame check.

Run: nice python benchmarks/fuzz_frames.py --frames 1000000 --seed 0 [--json] [--no-engine] [--crc16-factor 10]

Fresh random requests of every request type (valid, inside an 8x8 board's limits, consecutive sequence
numbers) are corrupted by three models, `--frames` split in thirds: (a) link: bit flips, byte drops and byte
insertions at `--link-rate` per byte over streams of 1-8 frames; (b) structural, four kinds: a bit burst
(1-16 bits) across a COBS code byte, a code byte rewritten to skip to a later one (COBS and length stay
valid), a truncation, a splice of two frames (head of one, tail of the next; mostly two requests of one
type losing a frame's worth of bytes); (c) random byte strings. Each input goes through a fresh FrameDecoder
and through a FirmwareEngine (8x8, wall clock frozen, HELLO done, fresh every `--session` inputs).

Counted per model: crashes (an exception out of decoder or engine), hangs (an input running past `--hang-s`),
"CRC-tested" (runs not sent that got as far as the CRC comparison: the check's real chances to fail) and
"not sent": frames the receiver accepted that are not byte-identical to a frame sent in that input, the
residual errors, reported per corrupted frame with a 95% upper bound (3/N when none). Models (a) and (b) also
run, `--crc16-factor` times as long and decoder only, against the protocol 1.x check (CRC-16 on payloads
<= 256 bytes; a local variant kept only here), to show that the harness sees what a weaker check lets by.
Exit status 1 if CRC-32 had a crash, a hang or a frame accepted that was not sent.
"""

from __future__ import annotations

import argparse
import binascii
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import cast

import numpy as np

from firmware_protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR, DecodeError, Frame, FrameDecoder, FrameType, Status
from firmware_protocol import messages as m
from firmware_protocol.cobs import CobsError, cobs_decode, cobs_encode
from firmware_protocol.crc import crc32_ieee
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine

ROWS = COLS = 8
MODELS = ("link", "burst", "code-skip", "truncate", "splice", "random")
STRUCTURAL = ("burst", "code-skip", "truncate", "splice")
CHECKS = ("CRC-32", "CRC-16 (1.x)")


# ------------------------------------------------------------------------------------------- requests
def _width(rng: np.random.Generator) -> int:
    return int(rng.integers(1, 1000)) * 10  # 10 ns .. 10 us on the 10 ns grid


def _gate(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 3301))


def _read_v(rng: np.random.Generator) -> int:
    return int(rng.integers(1, 301))


def _cell(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(0, ROWS)), int(rng.integers(0, COLS))


def _block(rng: np.random.Generator, most: int) -> tuple[int, int, int, int]:
    nrows, ncols = int(rng.integers(1, most + 1)), int(rng.integers(1, most + 1))
    return int(rng.integers(0, ROWS - nrows + 1)), int(rng.integers(0, COLS - ncols + 1)), nrows, ncols


def _write_verify(rng: np.random.Generator) -> m.WriteVerifyRequest:
    n = int(rng.integers(1, 5))
    flat = rng.choice(ROWS * COLS, n, replace=False)
    entries = np.zeros(n, m.WV_ENTRY)
    entries["row"], entries["col"] = flat // COLS, flat % COLS
    entries["target_s"] = rng.uniform(5e-6, 1e-4, n)
    entries["tol_s"] = rng.uniform(1e-6, 5e-6, n)
    entries["max_pulses"] = rng.integers(1, 11, n)
    set_start = int(rng.integers(500, 1500))
    reset_start = -int(rng.integers(500, 1500))
    return m.WriteVerifyRequest(
        _read_v(rng),
        _width(rng),
        set_start,
        set_start + int(rng.integers(0, 1500)),
        int(rng.integers(0, 100)),
        1000,
        1000 + int(rng.integers(0, 2300)),
        int(rng.integers(0, 100)),
        reset_start,
        reset_start - int(rng.integers(0, 1500)),
        -int(rng.integers(0, 100)),
        _gate(rng),
        n,
        entries,
    )


def _endurance(rng: np.random.Generator) -> m.EnduranceRequest:
    n_cycles = int(rng.integers(1, 21))
    set_v, reset_v = int(rng.integers(500, 3001)), -int(rng.integers(500, 3001))
    return m.EnduranceRequest(
        *_block(rng, 2),
        n_cycles,
        int(rng.integers(1, n_cycles + 1)),
        set_v,
        _width(rng),
        _gate(rng),
        reset_v,
        _width(rng),
        _gate(rng),
        _read_v(rng),
    )


def _form(rng: np.random.Generator) -> m.FormRequest:
    start = int(rng.integers(1000, 3001))
    return m.FormRequest(
        *_cell(rng),
        start,
        start + int(rng.integers(0, 2001)),
        int(rng.integers(50, 501)),
        _width(rng),
        _gate(rng),
        _read_v(rng),
        int(rng.integers(1, 100_000)),
    )


def _iv_sweep(rng: np.random.Generator) -> m.IvSweepRequest:
    v0, v1 = (int(v) for v in rng.integers(-3000, 3001, 2))
    return m.IvSweepRequest(
        *_cell(rng), v0, v1, int(rng.integers(2, 33)), _width(rng), _gate(rng), int(rng.integers(0, 2))
    )


REQUEST_MAKERS: dict[str, Callable[[np.random.Generator], m.Request]] = {
    "HELLO": lambda rng: m.HelloRequest(PROTOCOL_MAJOR, PROTOCOL_MINOR),
    "HEARTBEAT": lambda rng: m.HeartbeatRequest(int(rng.choice([0, int(rng.integers(100, 5001))]))),
    "GET_COUNTERS": lambda rng: m.CountersRequest(),
    "FORM": _form,
    "SET": lambda rng: m.SetRequest(*_cell(rng), int(rng.integers(0, 3001)), _width(rng), _gate(rng)),
    "RESET": lambda rng: m.ResetRequest(*_cell(rng), -int(rng.integers(0, 3001)), _width(rng), _gate(rng)),
    "READ": lambda rng: m.ReadRequest(*_cell(rng), _read_v(rng)),
    "READ_BLOCK": lambda rng: m.ReadBlockRequest(*_block(rng, ROWS), _read_v(rng)),
    "IV_SWEEP": _iv_sweep,
    "ENDURANCE": _endurance,
    "STREAM_ACK": lambda rng: m.StreamAck(int(rng.integers(0, 4)), int(rng.integers(0, 40))),
    "STREAM_RESEND": lambda rng: m.StreamResend(int(rng.integers(0, 4)), int(rng.integers(0, 40))),
    "WRITE_VERIFY": _write_verify,
    "ABORT": lambda rng: m.AbortRequest(),
    "ADVANCE_CLOCK": lambda rng: m.AdvanceClockRequest(int(rng.integers(0, 1_000_001))),
}


def _no_fields(cls: type[m.Message]) -> Callable[[np.random.Generator], m.Request]:
    return lambda rng: cast(m.Request, cls())


# Request types without fields (ABORT, RELEASE, ...) need no maker of their own; one with fields fails the smoke test.
for _cls in m.ALL_MESSAGES:
    if _cls.KIND == FrameType.REQUEST and _cls.OPCODE.name not in REQUEST_MAKERS and _cls.FORMAT == "<":
        REQUEST_MAKERS[_cls.OPCODE.name] = _no_fields(_cls)


REQUEST_TYPES = tuple(REQUEST_MAKERS)
# RELEASE ends the session and every request until the next HELLO is refused: drawn 1/4 as often as the rest,
# so that most intact requests really execute.
_WEIGHTS = np.array([0.25 if kind == "RELEASE" else 1.0 for kind in REQUEST_TYPES])
_CUMULATIVE = np.cumsum(_WEIGHTS / _WEIGHTS.sum())


def random_kind(rng: np.random.Generator) -> str:
    return REQUEST_TYPES[min(int(np.searchsorted(_CUMULATIVE, rng.random(), side="right")), len(REQUEST_TYPES) - 1)]


def random_request(rng: np.random.Generator, kind: str | None = None) -> m.Request:
    """A fresh valid request (inside an 8x8 simulated board's limits) of `kind`, or of a random type."""
    return REQUEST_MAKERS[random_kind(rng) if kind is None else kind](rng)


# ------------------------------------------------------------------------------------------- framings
def _v1_to_bytes(frame: Frame) -> bytes:
    """The protocol 1.x frame: CRC-16/CCITT-FALSE when the payload is <= 256 bytes, else BULK flag and CRC-32."""
    n = len(frame.payload)
    bulk = n > 256
    body = bytes([frame.version, int(frame.type) | (0x80 if bulk else 0)]) + frame.to_bytes()[2 : 8 + n]
    if bulk:
        return body + crc32_ieee(body).to_bytes(4, "little")
    return body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "little")


def _v1_check(raw: bytes) -> str:
    """The 1.x receive steps 4-6 on an un-stuffed frame: 'ok', 'length' (refused before the CRC) or 'crc'."""
    if len(raw) < 10:
        return "length"
    n = int.from_bytes(raw[6:8], "little")
    bulk = bool(raw[1] & 0x80)
    if n > 8192 or len(raw) != 8 + n + (4 if bulk else 2):
        return "length"
    body = raw[: 8 + n]
    stored = int.from_bytes(raw[8 + n :], "little")
    if stored != (crc32_ieee(body) if bulk else binascii.crc_hqx(body, 0xFFFF)):
        return "crc"
    return "ok" if bulk == (n > 256) and not raw[1] & 0x7C else "length"


@dataclass(frozen=True)
class Accepted:
    """What a receiver made of one input: the un-stuffed frames it accepted and how many runs failed the CRC."""

    frames: list[bytes]
    crc_failures: int


@dataclass(frozen=True)
class Framing:
    """A frame check under test: how a frame is put on the wire and what a receiver accepts from one input."""

    name: str
    crc_bits: int  # width of the check on the frames fuzzed here (all request payloads are <= 256 bytes)
    to_bytes: Callable[[Frame], bytes]
    accept: Callable[[bytes], Accepted]


def _v2_accept(data: bytes) -> Accepted:
    items = FrameDecoder().feed(data)
    frames = [x.to_bytes() for x in items if isinstance(x, Frame)]
    return Accepted(frames, sum(isinstance(x, DecodeError) and x.status == Status.BAD_CRC for x in items))


def _v1_accept(data: bytes) -> Accepted:
    frames, crc_failures = [], 0
    for run in data.split(b"\x00"):
        if not run:
            continue
        try:
            raw = cobs_decode(run)
        except CobsError:
            continue
        verdict = _v1_check(raw)
        if verdict == "ok":
            frames.append(raw)
        crc_failures += verdict == "crc"
    return Accepted(frames, crc_failures)


FRAMINGS = {
    "CRC-32": Framing("CRC-32", 32, Frame.to_bytes, _v2_accept),
    "CRC-16 (1.x)": Framing("CRC-16 (1.x)", 16, _v1_to_bytes, _v1_accept),
}


# ------------------------------------------------------------------------------------------- corruption models
@dataclass
class Case:
    """One fuzz input: the frames sent (un-stuffed), the bytes received, and how many sent frames were altered."""

    sent: list[bytes]
    data: bytes
    corrupted: int


def _spans(wires: list[bytes]) -> np.ndarray:
    return np.cumsum([len(w) for w in wires])


def link_case(rng: np.random.Generator, raws: list[bytes], wires: list[bytes], rate: float) -> Case:
    """Random bit flips, byte drops and byte insertions, each at rate/3 per byte, over a stream of frames."""
    stream = bytearray(b"".join(wires))
    n = len(stream)
    k = int(rng.binomial(n, rate))
    pos = np.sort(rng.integers(0, n, k))[::-1]  # from the end, so earlier positions stay valid
    kinds = rng.integers(0, 3, k)
    values = rng.integers(0, 256, k)
    bits = rng.integers(0, 8, k)
    for p, kind, v, b in zip(pos.tolist(), kinds.tolist(), values.tolist(), bits.tolist()):
        if kind == 2:
            stream.insert(p, v)
        elif p < len(stream):  # a byte at the end may already have been dropped by an error at the same place
            if kind == 0:
                stream[p] ^= 1 << b
            else:
                del stream[p]
    ends = _spans(wires)
    touched = np.unique(np.searchsorted(ends, pos, side="right")) if k else np.zeros(0, int)
    return Case(raws, bytes(stream), int(touched.size))


def _code_positions(wire: bytes) -> list[int]:
    out, i, end = [], 0, len(wire) - 1  # the delimiter is not part of the COBS chain
    while i < end:
        out.append(i)
        i += wire[i]
    return out


def burst_case(rng: np.random.Generator, raw: bytes, wire: bytes) -> Case:
    """XOR a bit burst of 1-16 bits (first and last bit set) over a window that covers one COBS code byte."""
    codes = _code_positions(wire)
    code = codes[int(rng.integers(0, len(codes)))]
    length = int(rng.integers(1, 17))
    first = code * 8 + int(rng.integers(0, 8)) - int(rng.integers(0, length))  # a bit of the code byte is hit
    first = min(max(first, 0), (len(wire) - 1) * 8 - length)  # the delimiter is left alone
    pattern = rng.integers(0, 2, length)
    pattern[0] = pattern[-1] = 1
    out = bytearray(wire)
    for i in np.flatnonzero(pattern).tolist():
        bit = first + i
        out[bit // 8] ^= 1 << (bit % 8)
    return Case([raw], bytes(out), 1)


def code_skip_case(rng: np.random.Generator, raw: bytes, wire: bytes) -> Case | None:
    """A COBS code byte rewritten to point at a later code byte: the COBS stays valid and the decoded length is
    unchanged (each skipped code byte becomes data, each skipped zero is lost), so only the CRC can tell."""
    codes = _code_positions(wire)
    starts = [i for i in range(len(codes) - 2) if wire[codes[i]] != 0xFF]
    if not starts:
        return None  # fewer than three COBS blocks: nothing to skip
    i = starts[int(rng.integers(0, len(starts)))]
    last = i + 2  # the furthest code byte reachable: a code is at most 0xFE and a skipped 0xFF block adds a byte
    while last + 1 < len(codes) and codes[last + 1] - codes[i] < 0xFF and wire[codes[last]] != 0xFF:
        last += 1
    p, q = codes[i], codes[int(rng.integers(i + 2, last + 1))]
    if q - p >= 0xFF or any(wire[c] == 0xFF for c in codes[i + 1 : codes.index(q)]):
        return None
    out = bytearray(wire)
    out[p] = q - p
    return Case([raw], bytes(out), 1)


def truncate_case(rng: np.random.Generator, raw: bytes, wire: bytes) -> Case:
    """The frame loses its tail: a delimiter arrives after 1 .. len-2 of its bytes."""
    cut = int(rng.integers(1, len(wire) - 1))
    return Case([raw], wire[:cut] + b"\x00", 1)


def splice_case(rng: np.random.Generator, a: tuple[bytes, bytes], b: tuple[bytes, bytes], keep_length: bool) -> Case:
    """Bytes lost across a frame boundary: the head of A runs into the tail of B, the run as long as B if asked."""
    (raw_a, wire_a), (raw_b, wire_b) = a, b
    i = int(rng.integers(1, len(wire_a) - 1))
    if keep_length:  # with B's length and A's header, only the CRC can tell (if the COBS chain holds)
        j = i + len(wire_b) - len(wire_a)
    else:
        j = int(rng.integers(0, len(wire_b) - 1))
    j = min(max(j, 0), len(wire_b) - 1)
    return Case([raw_a, raw_b], wire_a[:i] + wire_b[j:], 2)


def random_case(rng: np.random.Generator) -> Case:
    """A random byte string of 1-300 bytes (half of them without 0x00, so the whole string is one run)."""
    n = int(rng.integers(1, 301))
    low = 1 if rng.random() < 0.5 else 0
    return Case([], rng.integers(low, 256, n, dtype=np.uint8).tobytes() + b"\x00", 1)


class CaseMaker:
    """Draws fuzz inputs of one model: fresh random requests (never a fixed pool) with consecutive sequence numbers."""

    def __init__(self, rng: np.random.Generator, framing: Framing, link_rate: float) -> None:
        self.rng = rng
        self.framing = framing
        self.link_rate = link_rate
        self.seq = 1

    def _frame(self, kind: str | None = None) -> tuple[bytes, bytes]:
        """A fresh request frame: (un-stuffed bytes, wire bytes)."""
        self.seq = self.seq % 0xFFFE + 1  # 1 .. 0xFFFE: never the reserved 0xFFFF
        raw = self.framing.to_bytes(random_request(self.rng, kind).to_frame(self.seq))
        return raw, cobs_encode(raw) + b"\x00"

    def make(self, model: str) -> Case:
        rng = self.rng
        if model == "link":
            pairs = [self._frame() for _ in range(int(rng.integers(1, 9)))]
            return link_case(rng, [p[0] for p in pairs], [p[1] for p in pairs], self.link_rate)
        if model == "burst":
            return burst_case(rng, *self._frame())
        if model == "code-skip":
            while (case := code_skip_case(rng, *self._frame())) is None:
                pass
            return case
        if model == "truncate":
            return truncate_case(rng, *self._frame())
        if model == "splice":
            # 3 in 4: two consecutive requests of one type (a host polling) losing a frame's worth of bytes
            kind = random_kind(rng)
            polling = rng.random() < 0.75
            return splice_case(rng, self._frame(kind), self._frame(kind if polling else None), polling)
        return random_case(rng)


# ------------------------------------------------------------------------------------------- running
class Hang(Exception):
    """An input ran past the per-input wall-time bound."""


def _raise_hang(signum: int, frame: object) -> None:
    raise Hang()


@contextmanager
def alarm_handler() -> Iterator[bool]:
    """Route SIGALRM to Hang for the duration (main thread only); yields whether inputs can be interrupted."""
    if not (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()):
        yield False  # elsewhere an input is only timed
        return
    old = signal.signal(signal.SIGALRM, _raise_hang)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _RecordingDecoder(FrameDecoder):
    """The engine's decoder, keeping what it accepted and its CRC failures so the fuzzer can judge them."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: list[bytes] = []
        self.crc_failures = 0

    def iter_feed(self, data: bytes) -> Iterator[Frame | DecodeError]:
        for item in super().iter_feed(data):
            if isinstance(item, Frame):
                self.accepted.append(item.to_bytes())
            elif item.status == Status.BAD_CRC:
                self.crc_failures += 1
            yield item


class EngineUnderTest:
    """A simulated board (8x8, wall clock frozen, HELLO done) whose decoder is watched; fresh every `session` inputs."""

    def __init__(self, seed: int, session: int) -> None:
        self.seed, self.session, self.used = seed, session, 0
        self.ok_responses = 0  # requests the board answered with status OK: proof that requests really ran
        self.renew()

    def renew(self) -> None:
        self.engine = FirmwareEngine(BoardConfig(rows=ROWS, cols=COLS, seed=self.seed), wall_clock=lambda: 0.0)
        self.decoder = _RecordingDecoder()
        self.engine.decoder = self.decoder
        self.engine.poll()  # EV_BOOT
        hello = m.HelloRequest(PROTOCOL_MAJOR, PROTOCOL_MINOR).to_frame(0xFFFE).encode()
        answer = FrameDecoder().feed(self.engine.feed(hello))
        if not (len(answer) == 1 and isinstance(answer[0], Frame) and answer[0].status == Status.OK):
            raise RuntimeError(f"the simulated board refused HELLO, so no request would run: {answer}")
        self.decoder.accepted.clear()
        self.used = 0

    def feed(self, data: bytes) -> Accepted:
        """Feed one input; what the board's decoder accepted from it."""
        if self.used >= self.session:
            self.renew()
        self.used += 1
        out = self.engine.feed(data) + self.engine.poll()
        self.ok_responses += sum(
            isinstance(x, Frame) and x.type == FrameType.RESPONSE and x.status == Status.OK
            for x in FrameDecoder().feed(out)
        )
        if self.engine.decoder is not self.decoder:
            raise RuntimeError("the engine replaced its decoder: the fuzzer can no longer see what it accepts")
        got = Accepted(self.decoder.accepted, self.decoder.crc_failures)
        self.decoder.accepted, self.decoder.crc_failures = [], 0
        return got


@dataclass
class Tally:
    """What one (model, check, path) saw."""

    model: str
    check: str
    path: str
    crc_bits: int
    inputs: int = 0
    frames: int = 0
    corrupted: int = 0
    crashes: int = 0
    hangs: int = 0
    crc_tested: int = 0  # runs not sent that reached the CRC comparison: the check's real chances to fail
    bad_accepts: int = 0
    max_input_ms: float = 0.0
    ok_responses: int | None = None  # engine path: requests answered with status OK
    examples: list[str] = field(default_factory=list)  # first few crashes, hangs and bad accepts (input hex)

    def note(self, what: str, data: bytes) -> None:
        if len(self.examples) < 5:
            self.examples.append(f"{what}: {data[:160].hex()}")

    def add(self, other: Tally) -> None:
        for name in ("inputs", "frames", "corrupted", "crashes", "hangs", "crc_tested", "bad_accepts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_input_ms = max(self.max_input_ms, other.max_input_ms)
        if other.ok_responses is not None:
            self.ok_responses = (self.ok_responses or 0) + other.ok_responses

    @property
    def expected(self) -> float:
        """Accepts expected of an ideal check of this width: one in 2^bits of its chances."""
        return self.crc_tested * 2.0**-self.crc_bits

    @property
    def rate(self) -> float | None:
        return self.bad_accepts / self.corrupted if self.corrupted else None

    @property
    def upper95(self) -> float | None:
        """95% upper bound of the residual rate: 3/N when nothing was seen, else the Clopper-Pearson bound."""
        if not self.corrupted:
            return None
        if self.bad_accepts == 0:
            return 3.0 / self.corrupted
        from scipy.stats import beta

        return float(beta.ppf(0.975, self.bad_accepts + 1, self.corrupted - self.bad_accepts))


def _run_one(tally: Tally, case: Case, accept: Callable[[bytes], Accepted], hang_s: float, armed: bool) -> None:
    """One input through one receiver: count a crash, a hang, or the frames it accepted that were not sent."""
    sent = set(case.sent)
    data = case.data + b"\x00"  # a flush (extra delimiters are allowed): nothing carries over to the next input
    t0 = time.perf_counter()
    try:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, hang_s)
        try:
            got = accept(data)
        finally:
            if armed:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except Hang:
        tally.hangs += 1
        tally.note("hang", data)
        return
    except Exception as exc:  # the point of the fuzzer: anything escaping is a crash
        tally.crashes += 1
        tally.note(f"crash {type(exc).__name__}: {exc}", data)
        return
    finally:
        elapsed = time.perf_counter() - t0
        tally.max_input_ms = max(tally.max_input_ms, elapsed * 1e3)
    if elapsed > hang_s:
        tally.hangs += 1
        tally.note("slow", data)
    bad = sum(raw not in sent for raw in got.frames)
    if bad:
        tally.bad_accepts += bad
        tally.note("accepted but not sent", data)
    tally.crc_tested += got.crc_failures + bad


def run_model(
    model: str, check: str, n_frames: int, seed: int, link_rate: float, hang_s: float, engine: bool, session: int
) -> list[Tally]:
    """Fuzz one model until `n_frames` frames were sent; tallies for the decoder (and the engine, CRC-32 only)."""
    framing = FRAMINGS[check]
    rng = np.random.default_rng([seed, MODELS.index(model), CHECKS.index(check)])
    maker = CaseMaker(rng, framing, link_rate)
    dec = Tally(model, check, "decoder", framing.crc_bits)
    eng = Tally(model, check, "engine", framing.crc_bits)
    board = EngineUnderTest(seed, session) if engine else None
    with alarm_handler() as armed:
        while dec.frames < n_frames:
            case = maker.make(model)
            for tally in (dec, eng) if board else (dec,):
                tally.inputs += 1
                tally.frames += max(len(case.sent), 1)
                tally.corrupted += case.corrupted
            _run_one(dec, case, framing.accept, hang_s, armed)
            if board is not None:
                crashes, hangs = eng.crashes, eng.hangs
                _run_one(eng, case, board.feed, hang_s, armed)
                if (eng.crashes, eng.hangs) != (crashes, hangs):
                    board.renew()  # an engine that raised or was interrupted is not trusted further
    if board is None:
        return [dec]
    eng.ok_responses = board.ok_responses
    return [dec, eng]


def split(frames: int) -> dict[str, int]:
    """Frames per model: a third each to (a) link, (b) structural (shared by its four kinds) and (c) random."""
    third = frames // 3
    return {"link": third, "random": third} | {k: (frames - 2 * third) // len(STRUCTURAL) for k in STRUCTURAL}


def fuzz(
    frames: int,
    seed: int = 0,
    link_rate: float = 0.01,
    hang_s: float = 2.0,
    engine: bool = True,
    crc16_factor: float = 10.0,
    session: int = 256,
) -> list[Tally]:
    """Every model against CRC-32 (decoder and engine), then (a)+(b) against the 1.x CRC-16 check (decoder only)."""
    per_model = split(frames)
    out: list[Tally] = []
    for model in MODELS:
        out += run_model(model, "CRC-32", per_model[model], seed, link_rate, hang_s, engine, session)
    if crc16_factor > 0:
        for model in MODELS[:-1]:
            n = max(1, int(per_model[model] * crc16_factor))
            out += run_model(model, "CRC-16 (1.x)", n, seed, link_rate, hang_s, False, session)
    return out


def totals(tallies: list[Tally]) -> list[Tally]:
    """The structural kinds summed into model (b), per check and path."""
    out = []
    for check in CHECKS:
        for path in ("decoder", "engine"):
            parts = [t for t in tallies if t.check == check and t.path == path and t.model in STRUCTURAL]
            if parts:
                total = Tally("(b) structural", check, path, parts[0].crc_bits)
                for t in parts:
                    total.add(t)
                out.append(total)
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def table(tallies: list[Tally]) -> str:
    """An aligned text table, one row per (model, check, path)."""
    cols = (
        ("model", 15, lambda t: t.model),
        ("check", 12, lambda t: t.check),
        ("path", 7, lambda t: t.path),
        ("inputs", 8, lambda t: t.inputs),
        ("frames", 8, lambda t: t.frames),
        ("corrupted", 9, lambda t: t.corrupted),
        ("crashes", 7, lambda t: t.crashes),
        ("hangs", 5, lambda t: t.hangs),
        ("max ms", 6, lambda t: f"{t.max_input_ms:.1f}"),
        ("CRC-tested", 10, lambda t: t.crc_tested),
        ("expected", 8, lambda t: f"{t.expected:.2g}"),
        ("not sent", 8, lambda t: t.bad_accepts),
        ("rate", 7, lambda t: _fmt(t.rate)),
        ("95% upper", 9, lambda t: _fmt(t.upper95)),
        ("OK answers", 10, lambda t: "-" if t.ok_responses is None else t.ok_responses),
    )
    fmt = lambda values: " ".join(  # text columns left, numbers right
        f"{str(v):{'<' if i < 3 else '>'}{w}s}" for i, ((_, w, _), v) in enumerate(zip(cols, values))
    )
    head = fmt([c[0] for c in cols])
    return "\n".join([head, "-" * len(head)] + [fmt([c[2](t) for c in cols]) for t in tallies])


LEGEND = (
    "not sent = frames accepted that are not byte-identical to a frame sent in that input; CRC-tested = runs not "
    "sent that reached the CRC comparison;\nexpected = CRC-tested x 2^-bits (an ideal check); rate = not sent per "
    "corrupted frame; 95% upper = 3/N when 0, else Clopper-Pearson."
)


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer; exit status 1 if CRC-32 saw a crash, a hang or a frame accepted that was not sent."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames sent to CRC-32, split between the models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--link-rate", type=float, default=0.01, help="model (a) errors per byte (default 0.01)")
    ap.add_argument("--hang-s", type=float, default=2.0, help="wall-time bound per input (default 2 s)")
    ap.add_argument("--session", type=int, default=256, help="inputs per fresh simulated board (default 256)")
    ap.add_argument(
        "--crc16-factor",
        type=float,
        default=10.0,
        help="frames for the 1.x comparison, x those of (a) and (b) (0: skip)",
    )
    ap.add_argument("--no-engine", action="store_true", help="decoder only (much faster)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    if args.frames < 3 or not 0 < args.link_rate < 1 or args.hang_s <= 0 or args.session < 1 or args.crc16_factor < 0:
        ap.error("--frames must be >= 3, --link-rate in (0, 1), --hang-s and --session positive, --crc16-factor >= 0")
    t0 = time.perf_counter()
    try:
        tallies = fuzz(
            args.frames, args.seed, args.link_rate, args.hang_s, not args.no_engine, args.crc16_factor, args.session
        )
    except RuntimeError as exc:  # the harness could not set up a board: say so in one line
        print(f"fuzz_frames: error: {exc}", file=sys.stderr)
        return 2
    rows = tallies + totals(tallies)
    elapsed = time.perf_counter() - t0
    if args.json:
        doc = {
            "frames": args.frames,
            "seed": args.seed,
            "link_rate": args.link_rate,
            "hang_s": args.hang_s,
            "crc16_factor": args.crc16_factor,
            "elapsed_s": round(elapsed, 1),
            "rows": [asdict(t) | {"expected": t.expected, "rate": t.rate, "upper95": t.upper95} for t in rows],
        }
        print(json.dumps(doc, indent=1, allow_nan=False))
    else:
        print(table(rows))
        print(
            f"\n--frames {args.frames} --seed {args.seed}: link rate {args.link_rate}/byte, hang bound {args.hang_s} s, "
            f"CRC-16 comparison x{args.crc16_factor:g}, {elapsed:.0f} s.\n{LEGEND}"
        )
        for t in rows:
            for ex in t.examples[:2]:
                print(f"  {t.model} / {t.check} / {t.path}: {ex}")
    bad = any(t.crashes or t.hangs or t.bad_accepts for t in tallies if t.check == "CRC-32")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
