"""The simulated board over its transports: in-process SimLink, pyserial's sim:// URL, a real pty, `rram sim serve`."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest
import serial
from click.testing import CliRunner

from firmware_protocol import BoardState, DecodeError, Frame, FrameDecoder, FrameType, Opcode, Status, decode_payload
from firmware_protocol import messages as m
from firmware_protocol.constants import SessionEnd
from hil.cli import cli
from hil.hardware.board import Board, BoardConnectionError
from hil.hardware.transport import open_link
from sim_backend.board_config import BoardConfig
from sim_backend.faults import LinkFaults
from sim_backend.firmware import FirmwareEngine
from sim_backend.link import SimLink
from sim_backend.protocol_sim import register_url_handler
from sim_backend.pty_server import PtyBoard
from sim_backend.sim_url import make_sim_url, parse_sim_url


class SerialHost:
    """Request/response over anything with pyserial's read/write: collects frames until the answer arrives."""

    def __init__(self, port: object, timeout: float = 2.0) -> None:
        self.port = port
        self.decoder = FrameDecoder()
        self.timeout = timeout
        self.seq = 0
        self.received: list[Frame | DecodeError] = []

    def pump(self, seconds: float = 0.05) -> list[Frame | DecodeError]:
        """Read whatever arrives within `seconds`."""
        end = time.monotonic() + seconds
        got: list[Frame | DecodeError] = []
        while time.monotonic() < end:
            data = self.port.read(max(1, self.port.in_waiting))  # type: ignore[attr-defined]
            got += self.decoder.feed(data)
        self.received += got
        return got

    def exchange(self, msg: m.Message) -> Frame:
        self.seq += 1
        self.port.write(msg.to_frame(self.seq).encode())  # type: ignore[attr-defined]
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            data = self.port.read(max(1, self.port.in_waiting))  # type: ignore[attr-defined]
            items = self.decoder.feed(data)
            self.received += items
            for item in items:
                if isinstance(item, Frame) and item.type == FrameType.RESPONSE and item.seq == self.seq:
                    return item
        raise TimeoutError(f"no answer to {type(msg).__name__} seq {self.seq}")

    def ok(self, msg: m.Message) -> m.Message:
        frame = self.exchange(msg)
        assert frame.status == Status.OK, f"{type(msg).__name__}: {Status(frame.status).name}"
        return decode_payload(frame)


def talk_to_board(host: SerialHost, rows: int, cols: int, seed: int) -> None:
    """HELLO, READ, SET, READ_BLOCK, GET_COUNTERS through a serial port; checks the answers' numbers."""
    info = host.ok(m.HelloRequest(1, 0))
    assert (info.rows, info.cols) == (rows, cols)
    assert info.session_id == FirmwareEngine(BoardConfig(rows=rows, cols=cols, seed=seed)).session_id
    form = host.ok(m.FormRequest(0, 1, 2400, 4500, 100, 1000, 1000, 100, 5000))
    assert form.formed == 1 and form.pulses >= 1
    read = host.ok(m.ReadRequest(0, 1, 100))
    g = (read.code - read.offset_code) * read.amps_per_code / 0.1
    assert 5e-6 < g < 60e-6  # formed at the 1.0 V gate: ~20 uS
    host.ok(m.SetRequest(0, 1, 1200, 100, 1200))
    block = host.ok(m.ReadBlockRequest(0, 0, rows, cols, 100))
    assert block.codes.shape == (rows * cols,) and block.codes[1] > block.codes[0]
    counts = host.ok(m.CountersRequest())
    assert (counts.form_pulses, counts.set_pulses) == (form.pulses, 1)
    assert counts.reads == form.pulses + 1 + 1 + rows * cols


# ------------------------------------------------------------------------------------- SimLink
def test_simlink_delivers_boot_event_and_answers_like_a_serial_port() -> None:
    link = SimLink(FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1)), timeout=0.5)
    host = SerialHost(link)
    boot = host.pump(0.01)
    assert [f.opcode for f in boot] == [Opcode.EV_BOOT]  # type: ignore[union-attr]
    talk_to_board(host, 8, 8, 1)
    t0 = time.monotonic()
    assert link.read(10) == b""  # nothing pending: read returns after its timeout
    assert 0.4 < time.monotonic() - t0 < 2.0
    link.close()
    with pytest.raises(serial.PortNotOpenError):
        link.write(b"\x00")


def test_simlink_bit_flips_corrupt_frames_but_valid_frames_still_get_answers() -> None:
    link = SimLink(FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1)), LinkFaults(flip=0.01, seed=4), timeout=0.05)
    decoder = FrameDecoder()
    link.write(m.HelloRequest(1, 0).to_frame(1).encode())
    items: list[Frame | DecodeError] = []
    for seq in range(2, 302):
        link.write(m.ReadBlockRequest(0, 0, 2, 8, 100).to_frame(seq).encode())
        items += decoder.feed(link.read(link.in_waiting))  # no delay faults: the answer is there at once
    frames = [f for f in items if isinstance(f, Frame)]
    errors = [f for f in items if isinstance(f, DecodeError)]
    assert link._inj.bytes_flipped > 100
    assert errors and all(e.status in (Status.BAD_CRC, Status.BAD_LENGTH) for e in errors)
    blocks = [
        f for f in frames if f.type == FrameType.RESPONSE and f.opcode == Opcode.READ_BLOCK and f.status == Status.OK
    ]
    naks = [f for f in frames if f.type == FrameType.NAK]
    assert len(blocks) > 50  # most frames of ~50 bytes survive a 1 % byte error rate in both directions
    assert naks  # requests corrupted on the way in were NAKed
    assert all(decode_payload(f).codes.size == 16 for f in blocks)


def test_simlink_reset_after_reboots_the_board_once() -> None:
    engine = FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1))
    first_session = engine.session_id
    hello = m.HelloRequest(1, 0).to_frame(1).encode()
    link = SimLink(engine, LinkFaults(reset_after=len(hello) + 5), timeout=0.05)
    host = SerialHost(link, timeout=0.5)
    host.pump(0.01)
    assert host.ok(m.HelloRequest(1, 0)).session_id == first_session
    # The reboot cuts the next request after 5 bytes: the new firmware sees the rest as garbage.
    link.write(m.ReadRequest(0, 0, 100).to_frame(2).encode())
    got = host.pump(0.1)
    assert [(f.type, f.opcode) for f in got] == [(FrameType.EVENT, Opcode.EV_BOOT), (FrameType.NAK, 0)]  # type: ignore[union-attr]
    assert decode_payload(got[0]).session_id == engine.session_id != first_session  # type: ignore[arg-type]
    host.seq = 2
    assert host.exchange(m.ReadRequest(0, 0, 100)).status == Status.HANDSHAKE_REQUIRED
    assert host.ok(m.HelloRequest(1, 0)).session_id == engine.session_id
    for _ in range(3):  # only once
        host.ok(m.ReadRequest(0, 0, 100))
    assert not any(isinstance(f, Frame) and f.opcode == Opcode.EV_BOOT for f in host.pump(0.05))


def test_simlink_delay_holds_answers_back_without_reordering() -> None:
    link = SimLink(
        FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1)), LinkFaults(delay=1.0, delay_max_s=0.1, seed=2), timeout=1.0
    )
    host = SerialHost(link)
    host.pump(0.12)
    host.ok(m.HelloRequest(1, 0))
    waits = []
    for seq in range(10):
        t0 = time.monotonic()
        frame = host.exchange(m.ReadRequest(seq % 8, 0, 100))
        waits.append(time.monotonic() - t0)
        assert frame.status == Status.OK
    assert max(waits) > 0.02
    seqs = [f.seq for f in host.received if isinstance(f, Frame) and f.type == FrameType.RESPONSE]
    assert seqs == sorted(seqs)


# ------------------------------------------------------------------------------------- sim:// URLs
def test_serial_for_url_opens_a_simulated_board() -> None:
    register_url_handler()
    register_url_handler()  # idempotent
    port = serial.serial_for_url("sim://?seed=1&rows=8&cols=8", timeout=0.5)
    try:
        assert port.is_open and port.engine.config.rows == 8
        SerialHost(port).pump(0.01)
        talk_to_board(SerialHost(port), 8, 8, 1)
        port.timeout = 0.1
        t0 = time.monotonic()
        assert port.read(1) == b""
        assert time.monotonic() - t0 < 0.5
    finally:
        port.close()
    assert not port.is_open
    with pytest.raises(serial.PortNotOpenError):
        port.write(b"\x00")


def test_sim_url_fault_options_are_applied() -> None:
    register_url_handler()
    url = make_sim_url(seed=2, rows=8, cols=8, flip=0.01, fault_seed=3, watchdog_ms=5000)
    config, faults = parse_sim_url(url)
    assert (config.seed, config.rows, config.watchdog_ms) == (2, 8, 5000)
    assert (faults.flip, faults.seed) == (0.01, 3)
    port = serial.serial_for_url(url, timeout=0.05)
    try:
        decoder = FrameDecoder()
        items: list[Frame | DecodeError] = []
        port.write(m.HelloRequest(1, 0).to_frame(1).encode())
        for seq in range(2, 102):
            port.write(m.ReadRequest(1, 1, 100).to_frame(seq).encode())
            items += decoder.feed(port.read(port.in_waiting))
        assert port.link.faults.flip == 0.01 and port.link._inj.bytes_flipped > 0
        assert any(isinstance(i, DecodeError) for i in items)
        assert sum(isinstance(i, Frame) and i.type == FrameType.RESPONSE for i in items) > 40
    finally:
        port.close()


@pytest.mark.parametrize(
    "url,message",
    [
        ("sim://?seed=1&bogus=3", "unknown sim:// option 'bogus'"),
        ("sim://?rows=eight", "sim:// option rows='eight' is not a valid int"),
        ("sim://?reset_after=1.5", "sim:// option reset_after='1.5' is not a valid int"),
        ("sim://?flip=2", "fault probability flip=2.0 must lie in [0, 1]"),
        ("sim://?rows=0", "rows and cols must be 1..4096"),
    ],
)
def test_bad_sim_url_gives_a_clear_error(url: str, message: str) -> None:
    register_url_handler()
    with pytest.raises(serial.SerialException, match=None) as info:
        serial.serial_for_url(url)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="expected sim://"):
        parse_sim_url("sym://?seed=1")


# ------------------------------------------------------------------------------------- real pty
@pytest.fixture
def pty_board() -> Iterator[PtyBoard]:
    board = PtyBoard(FirmwareEngine(BoardConfig(rows=16, cols=32, seed=1)))
    thread = threading.Thread(target=board.serve, kwargs={"poll_s": 0.005}, daemon=True)
    thread.start()
    yield board
    board.close()
    thread.join(timeout=2)
    assert not thread.is_alive()


def test_pty_board_talks_through_pyserial(pty_board: PtyBoard) -> None:
    assert pty_board.path.startswith("/dev/")
    with serial.Serial(pty_board.path, 921600, timeout=1) as port:
        talk_to_board(SerialHost(port), 16, 32, 1)  # the READ_BLOCK answer is > 1 kB through the pty


def test_pty_board_reset_after_and_reconnect() -> None:
    hello, read = (msg.to_frame(1).encode() for msg in (m.HelloRequest(1, 0), m.ReadRequest(0, 0, 100)))
    board = PtyBoard(
        FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1)), LinkFaults(reset_after=len(hello) + len(read))
    )
    thread = threading.Thread(target=board.serve, kwargs={"poll_s": 0.005}, daemon=True)
    thread.start()
    try:
        with serial.Serial(board.path, 921600, timeout=0.5) as port:
            host = SerialHost(port, timeout=1.0)
            first = host.ok(m.HelloRequest(1, 0)).session_id
            statuses = [host.exchange(m.ReadRequest(0, 0, 100)).status for _ in range(3)]
            assert statuses == [Status.OK, Status.HANDSHAKE_REQUIRED, Status.HANDSHAKE_REQUIRED]
            # (the EV_BOOT of power-up may be flushed by pyserial's open; the reboot's arrives)
            boots = [f for f in host.received if isinstance(f, Frame) and f.opcode == Opcode.EV_BOOT]
            boots = [f for f in boots if decode_payload(f).session_id != first]
            assert len(boots) == 1
        with serial.Serial(board.path, 921600, timeout=0.5) as port:  # a second client on the same board
            host = SerialHost(port)
            assert host.ok(m.HelloRequest(1, 0)).session_id == decode_payload(boots[0]).session_id
            host.ok(m.ReadRequest(0, 0, 100))
    finally:
        board.close()
        thread.join(timeout=2)
    assert not thread.is_alive()
    with pytest.raises(OSError, match="closed"):
        board.serve()


def test_pty_board_drops_what_nobody_reads_so_its_watchdog_still_fires() -> None:
    engine = FirmwareEngine(BoardConfig(rows=64, cols=64, seed=1))
    board = PtyBoard(engine)
    thread = threading.Thread(target=board.serve, kwargs={"poll_s": 0.005}, daemon=True)
    thread.start()
    try:
        with serial.Serial(board.path, 921600, timeout=0.5) as port:
            host = SerialHost(port)
            host.ok(m.HelloRequest(2, 0))
            # a 64x64 stream fills its window with 8 events of ~8 kB, more than a pty holds (~20 kB) ...
            host.ok(m.EnduranceRequest(0, 0, 64, 64, 10_000, 100, 1200, 100, 1200, -1500, 100, 3300, 100))
            t0 = time.monotonic()  # ... and the host hangs: it neither reads nor closes the port
            while engine.state != BoardState.SAFE_IDLE and time.monotonic() - t0 < 10:
                time.sleep(0.05)
            waited = time.monotonic() - t0
            assert engine.state == BoardState.SAFE_IDLE and board.dropped_bytes > 0
            assert waited < 2.0 + 1.0 + 1.0  # the 2 s watchdog after at most one STALL_S (1 s) of waiting
        with serial.Serial(board.path, 921600, timeout=0.5) as port:  # the next host is served normally
            info = SerialHost(port).ok(m.HelloRequest(2, 0, 0, 7))
            assert info.prev_session_end == SessionEnd.WATCHDOG
    finally:
        board.close()
        thread.join(timeout=5)
    assert not thread.is_alive()


# ------------------------------------------------------------------------------------- rram sim serve
def test_rram_sim_serve_subprocess(tmp_path: Path) -> None:
    gt = tmp_path / "truth.h5"
    cmd = [
        sys.executable,
        "-c",
        "from hil.cli import main; main()",
        "sim",
        "serve",
        "--seed",
        "1",
        "--rows",
        "8",
        "--cols",
        "16",
        "--board-id",
        "BENCH-7",
        "--ground-truth",
        str(gt),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("serving simulated board on /dev/"), line + proc.stderr.read()  # type: ignore[union-attr]
        path = line.split()[-1]
        with serial.Serial(path, 921600, timeout=1) as port:
            host = SerialHost(port)
            talk_to_board(host, 8, 16, 1)
            assert host.ok(m.HelloRequest(1, 0)).board_id == "BENCH-7"
            host.ok(m.ReleaseRequest())
        with Board.open(path) as board:  # a host opens the served pty exclusively
            with pytest.raises(BoardConnectionError, match=f"port {path} is in use by another program"):
                open_link(path)
            assert board.info.board_id == "BENCH-7"
        with h5py.File(gt) as f:
            assert (f.attrs["rows"], f.attrs["cols"], f.attrs["seed"]) == (8, 16, 1)
            assert "read_chain" in f
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err


def test_rram_sim_serve_rejects_bad_options() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["sim", "serve", "--flip", "1.5"])
    assert result.exit_code == 2 and "1.5 is not in the range 0.0<=x<=1.0" in result.output
    result = runner.invoke(cli, ["sim", "serve", "--board-id", "A-BOARD-ID-THAT-IS-TOO-LONG"])
    assert result.exit_code == 1 and "longer than 16 characters" in result.output
    result = runner.invoke(cli, ["sim", "serve", "--help"])
    assert result.exit_code == 0 and "--reset-after" in result.output and "--ground-truth" in result.output
