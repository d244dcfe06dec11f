"""Benchmark: board operations through the simulated firmware (raw frames in, raw frames out, in process).

Times what a host pays per operation on the simulator, protocol included (framing, CRC, COBS,
limit checks, physics): 1,000 single READs, a 64x32 READ_BLOCK, one WRITE_VERIFY batch of 512 cells,
and an ENDURANCE stream of 1e6 cycles on 32x32 cells read every 1e4 cycles, consumed with acks.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from firmware_protocol import Frame, FrameDecoder, FrameType, Status, decode_payload
from firmware_protocol import messages as m
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine

# Write-verify ramps that suit the default device model (see tests/test_sim_firmware.py).
_WV = dict(
    v_read_mv=100,
    width_ns=100,
    set_v_start_mv=1200,
    set_v_stop_mv=1200,
    set_v_step_mv=0,
    set_gate_start_mv=700,
    set_gate_stop_mv=1300,
    set_gate_step_mv=10,
    reset_v_start_mv=-700,
    reset_v_stop_mv=-1500,
    reset_v_step_mv=-10,
    reset_gate_mv=3300,
)


@dataclass
class BenchResult:
    """Wall-clock seconds of each operation and a few sanity figures of what it produced."""

    reads_1000_s: float
    read_block_64x32_s: float  # mean per block
    write_verify_512_s: float
    wv_converged_frac: float
    wv_mean_pulses: float
    endurance_1e6x1024_s: float
    endurance_events: int
    endurance_bytes: int
    endurance_median_window: float


class _Host:
    """Minimal raw-frame host around a FirmwareEngine."""

    def __init__(self, engine: FirmwareEngine) -> None:
        self.engine = engine
        self.decoder = FrameDecoder()
        self.seq = 0
        self.bytes_in = 0

    def send(self, msg: m.Message) -> list[Frame]:
        self.seq = self.seq % 0xFFFE + 1
        out = self.engine.feed(msg.to_frame(self.seq).encode())
        self.bytes_in += len(out)
        items = self.decoder.feed(out)
        if not all(isinstance(f, Frame) for f in items):
            raise RuntimeError(f"undecodable board output: {items}")
        return items  # type: ignore[return-value]

    def request(self, msg: m.Message, ok: tuple[Status, ...] = (Status.OK,)) -> tuple[Frame, list[Frame]]:
        items = self.send(msg)
        rsp = next(f for f in items if f.type == FrameType.RESPONSE and f.seq == self.seq)
        if rsp.status not in ok:
            raise RuntimeError(f"{type(msg).__name__}: {Status(rsp.status).name} {rsp.payload!r}")
        return rsp, items


def run(seed: int = 0) -> BenchResult:
    """Build a formed 64x64 board and time the four operations."""
    engine = FirmwareEngine(BoardConfig(rows=64, cols=64, seed=seed))
    engine.poll()
    host = _Host(engine)
    host.request(m.HelloRequest(1, 0))
    rows, cols = np.divmod(np.arange(64 * 64), 64)
    engine.array.form(rows, cols, 3.6, 1000.0, 1.0)  # set-up, not timed: forming 4,096 cells directly

    t0 = time.perf_counter()
    for k in range(1000):
        host.request(m.ReadRequest(k % 64, (k // 64) % 64, 100), ok=(Status.OK, Status.ADC_SATURATED))
    reads_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in range(20):
        rsp, _ = host.request(m.ReadBlockRequest(0, 0, 64, 32, 100))
    block_s = (time.perf_counter() - t0) / 20  # mean of 20 (one block is ~1 ms)
    if decode_payload(rsp).codes.size != 64 * 32:
        raise RuntimeError("READ_BLOCK returned the wrong number of codes")

    rng = np.random.default_rng(seed)
    e = np.zeros(512, m.WV_ENTRY)
    e["row"], e["col"] = rows[:512] + 8, cols[:512]  # rows 8..15, all 64 columns
    e["target_s"], e["tol_s"], e["max_pulses"] = rng.uniform(4e-6, 36e-6, 512), 1e-6, 100
    t0 = time.perf_counter()
    rsp, _ = host.request(m.WriteVerifyRequest(**_WV, n=512, entries=e))  # type: ignore[arg-type]
    wv_s = time.perf_counter() - t0
    wv = decode_payload(rsp).results

    req = m.EnduranceRequest(32, 32, 32, 32, 1_000_000, 10_000, 1200, 100, 1200, -1500, 100, 3300, 100)
    t0 = time.perf_counter()
    bytes0 = host.bytes_in
    rsp, items = host.request(req)
    started = decode_payload(rsp)
    events: list[m.Message] = []
    while True:
        events += [decode_payload(f) for f in items if f.type == FrameType.EVENT]
        if events and isinstance(events[-1], m.EnduranceEnd):
            break
        _, items = host.request(m.StreamAck(started.stream_id, events[-1].event_no + 1))
    host.request(m.StreamAck(started.stream_id, started.n_events + 1))
    endurance_s = time.perf_counter() - t0
    data = [ev for ev in events if isinstance(ev, m.EnduranceData)]
    if len(data) != started.n_events or events[-1].cycles_done != 1_000_000:
        raise RuntimeError("endurance stream incomplete")
    last = data[-1]
    window = np.median((last.lrs_codes - last.offset_code) / np.maximum(last.hrs_codes - last.offset_code, 1.0))
    return BenchResult(
        reads_1000_s=reads_s,
        read_block_64x32_s=block_s,
        write_verify_512_s=wv_s,
        wv_converged_frac=float(np.mean(wv["status"] == 0)),
        wv_mean_pulses=float(wv["pulses"].mean()),
        endurance_1e6x1024_s=endurance_s,
        endurance_events=len(events),
        endurance_bytes=host.bytes_in - bytes0,
        endurance_median_window=float(window),
    )


def main() -> None:
    """Print the timings (and optionally write them as JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = ap.parse_args()
    r = run(args.seed)
    print(
        f"1,000 single READs:                    {r.reads_1000_s:8.3f} s  ({r.reads_1000_s * 1e3 / 1000:.3f} ms each)"
    )
    print(f"READ_BLOCK 64x32 (2,048 cells):        {r.read_block_64x32_s:8.4f} s  (mean of 20)")
    print(
        f"WRITE_VERIFY 512 cells:                {r.write_verify_512_s:8.3f} s  "
        f"({r.wv_converged_frac:.1%} converged, {r.wv_mean_pulses:.1f} pulses/cell)"
    )
    print(
        f"ENDURANCE 1e6 cycles x 1,024 cells:    {r.endurance_1e6x1024_s:8.3f} s  "
        f"({r.endurance_events} events, {r.endurance_bytes / 1e6:.2f} MB, final median LRS/HRS {r.endurance_median_window:.1f}x)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(r), f, indent=2)


if __name__ == "__main__":
    main()
