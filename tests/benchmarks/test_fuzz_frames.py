"""The frame fuzzer, short (2e4 frames through FrameDecoder and the simulated board), and its own power checks.

Why "0 accepted but not sent" is a sound assertion for CRC-32: a corrupted run is accepted only if it passes
COBS, the length check and the CRC; for the CRC a corrupted frame that is not a sent one passes with
probability about 2^-32 (2.3e-10). The short run gives about 2,000 such chances (the `crc_tested` count,
asserted below), so the expected number of false accepts is 2,000 x 2.3e-10 < 1e-6: a correct check fails
this test by chance less than once in 10^6 seeds, and the run is seeded, so it always passes or always fails.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import pytest

from firmware_protocol import Frame, FrameType
from firmware_protocol.cobs import cobs_encode
from firmware_protocol.messages import SetRequest
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fuzz():
    """The benchmark script as a module."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module("fuzz_frames")


def test_short_run_has_no_crash_hang_or_frame_that_was_not_sent(fuzz) -> None:
    tallies = fuzz.fuzz(20_000, seed=1, hang_s=10.0, crc16_factor=0)  # 10 s: a busy CI machine is not a hang
    assert {(t.model, t.path) for t in tallies} == {(m, p) for m in fuzz.MODELS for p in ("decoder", "engine")}
    for t in tallies:
        assert (t.crashes, t.hangs, t.bad_accepts) == (0, 0, 0), (t.model, t.path, t.examples)
    assert sum(t.frames for t in tallies if t.path == "decoder") >= 20_000 - len(fuzz.MODELS)
    # Power: the models really reach the CRC (so the zero above means something) and the board really ran requests.
    tested = sum(t.crc_tested for t in tallies if t.path == "decoder")
    assert tested > 1_500  # 1,945 with this seed
    assert tested * 2.0**-32 < 1e-6  # the expected number of false accepts of an ideal 32-bit check
    link = next(t for t in tallies if t.model == "link" and t.path == "engine")
    assert link.ok_responses > link.frames // 5  # intact requests ran (the rest: BUSY while streaming etc.)


def test_the_harness_counts_a_forged_frame(fuzz) -> None:
    """The splice that the 1.x CRC-16 accepted (tests/firmware_protocol/test_framing.py) is counted as not sent."""
    a = Frame(FrameType.REQUEST, 9588, 0x11, payload=SetRequest(2, 2, 691, 7990, 2727).encode())
    b = Frame(FrameType.REQUEST, 9589, 0x11, payload=SetRequest(1, 2, 1864, 5220, 2907).encode())
    for check, bad in (("CRC-16 (1.x)", 1), ("CRC-32", 0)):
        framing = fuzz.FRAMINGS[check]
        raw_a, raw_b = framing.to_bytes(a), framing.to_bytes(b)
        case = fuzz.Case([raw_a, raw_b], cobs_encode(raw_a)[:17] + cobs_encode(raw_b)[17:] + b"\x00", 2)
        tally = fuzz.Tally("splice", check, "decoder", framing.crc_bits)
        fuzz._run_one(tally, case, framing.accept, 2.0, False)
        assert (tally.bad_accepts, tally.crc_tested) == (bad, 1), check


def test_the_harness_counts_crashes_and_hangs(fuzz) -> None:
    case = fuzz.Case([], b"\x01\x00", 1)
    tally = fuzz.Tally("random", "CRC-32", "decoder", 32)

    def crash(data: bytes):
        raise ValueError("boom")

    def hang(data: bytes):
        time.sleep(0.3)
        return fuzz.Accepted([], 0)

    fuzz._run_one(tally, case, crash, 2.0, False)
    with fuzz.alarm_handler() as armed:
        fuzz._run_one(tally, case, hang, 0.05, armed)  # interrupted by SIGALRM, or found slow when not armed
    assert (tally.crashes, tally.hangs) == (1, 1) and "boom" in tally.examples[0]


def test_clean_streams_are_accepted_and_counted_as_sent(fuzz) -> None:
    (dec, eng) = fuzz.run_model("link", "CRC-32", 300, 2, 1e-9, 2.0, True, 64)
    assert dec.corrupted == 0 and (dec.crc_tested, dec.bad_accepts, eng.bad_accepts) == (0, 0, 0)
    assert eng.ok_responses > 90  # of 300 requests; the others met a stream (BUSY) or no session


def test_link_errors_at_every_byte_never_break_the_harness(fuzz) -> None:
    import numpy as np

    rng = np.random.default_rng(5)
    wires = [cobs_encode(b"\x01\x02") + b"\x00"] * 3
    for _ in range(2_000):  # every byte hit, often twice at the same place (two drops at the end)
        case = fuzz.link_case(rng, [b"\x01\x02"] * 3, wires, 1.0)
        assert case.corrupted <= 3


def test_generated_requests_cover_every_request_type_inside_the_board_limits(fuzz) -> None:
    import numpy as np

    from firmware_protocol.messages import ALL_MESSAGES

    assert set(fuzz.REQUEST_TYPES) == {c.OPCODE.name for c in ALL_MESSAGES if c.KIND == FrameType.REQUEST}
    limits = FirmwareEngine(BoardConfig(rows=fuzz.ROWS, cols=fuzz.COLS)).limits
    rng = np.random.default_rng(0)
    for kind in fuzz.REQUEST_TYPES:
        for _ in range(50):
            limits.check(fuzz.random_request(rng, kind))


def test_json_output_is_valid_json(fuzz, capsys) -> None:
    assert fuzz.main(["--frames", "60", "--seed", "3", "--crc16-factor", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["frames"] == 60 and {r["check"] for r in doc["rows"]} == {"CRC-32", "CRC-16 (1.x)"}
