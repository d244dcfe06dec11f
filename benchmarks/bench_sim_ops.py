"""Benchmark: board operations through the simulated firmware (raw frames in, raw frames out, in process).

Times what a host pays per operation on the simulator, protocol included (framing, CRC, COBS,
limit checks, physics): 1,000 single READs, READ_BLOCKs of 1, 8x8, 32x32 and 64x32 cells,
WRITE_VERIFY batches of 64, 256 and 512 cells, an ENDURANCE stream of 1e6 cycles on 32x32
cells read every 1e4 cycles, consumed with acks, and FORM ramps (2.0 -> 4.5 V by 0.1 V, a read after
each pulse) on the 1,024 pristine cells of a fresh 32x32 board, as `rram characterize form` sends them.

Cell-ops are what the board's own counters count (GET_COUNTERS): a READ_BLOCK of k cells is k
reads; a WRITE_VERIFY batch is its SET and RESET pulses plus its reads (one first read per cell,
one verify read per pulse). Rates are cell-ops per second of wall time, host side included. The
firmware's own cost is the time in `FirmwareEngine.feed` (decode, checks, physics, encode), fitted
as a cost per request plus a cost per cell over the block (and batch) sizes.

`--compare` runs `sim_backend.reference_ops.ReferenceEngine` (the code the fast batch paths
replaced) and `FirmwareEngine` in interleaved rounds (the order alternates), checks that both give
the same bytes, and prints each figure's min and median per engine and the median of the paired
per-round speed-ups. On a shared machine run several rounds: single figures move with the load.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from firmware_protocol import Frame, FrameDecoder, FrameType, Status, decode_payload
from firmware_protocol import messages as m
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from sim_backend.reference_ops import ReferenceEngine

# Write-verify ramps that suit the default device model (see tests/sim_backend/test_firmware.py).
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
BLOCKS = ((1, 1), (8, 8), (32, 32), (64, 32))  # READ_BLOCK shapes (rows x cols)
BLOCK_REPEATS = {1: 200, 64: 100, 1024: 20, 2048: 20}  # requests per shape (each timed, the mean kept)
# (cells, first row): each batch on cells not programmed before; the 512-cell one first, with the targets the
# benchmark always drew (rows 8..15)
WV_BATCHES = ((512, 8), (64, 40), (256, 24))
ENGINES = {"fast": FirmwareEngine, "reference": ReferenceEngine}


@dataclass
class BenchResult:
    """Wall-clock seconds of each operation, cell-op rates, the firmware's fitted costs, and sanity figures."""

    engine: str
    reads_1000_s: float
    read_block_64x32_s: float  # mean per block
    read_block_cells_per_s: dict[str, float]  # by shape, protocol included
    read_block_fw_us_per_request: float  # firmware time fitted over the block shapes: per request ...
    read_block_fw_us_per_cell: float  # ... plus per cell
    write_verify_512_s: float
    wv_cell_ops: int  # SET + RESET pulses + reads of the 512-cell batch
    wv_cell_ops_per_s: float
    wv_fw_us_per_request: float  # firmware time fitted over the batch sizes: per request ...
    wv_fw_us_per_cell: float  # ... plus per cell (entry)
    wv_fw_us_per_cell_op: float  # the 512-cell batch's firmware time per cell-op
    wv_converged_frac: float
    wv_mean_pulses: float
    endurance_1e6x1024_s: float
    endurance_events: int
    endurance_bytes: int
    endurance_median_window: float
    form_ramp_ms: float = 0.0  # mean per FORM request (one cell's ramp)
    form_pulses_mean: float = 0.0  # forming pulses per ramp
    payload_digest: int = 0  # hash of every response payload: equal for engines that give the same records
    extra: dict[str, float] = field(default_factory=dict)


class _Host:
    """Minimal raw-frame host around a FirmwareEngine; keeps the time spent inside the firmware."""

    def __init__(self, engine: FirmwareEngine) -> None:
        self.engine = engine
        self.decoder = FrameDecoder()
        self.seq = 0
        self.bytes_in = 0
        self.firmware_s = 0.0
        self.digest = 0

    def send(self, msg: m.Message) -> list[Frame]:
        self.seq = self.seq % 0xFFFE + 1
        wire = msg.to_frame(self.seq).encode()
        t0 = time.perf_counter()
        out = self.engine.feed(wire)
        self.firmware_s += time.perf_counter() - t0
        self.bytes_in += len(out)
        items = self.decoder.feed(out)
        frames = [f for f in items if isinstance(f, Frame)]
        if len(frames) != len(items):
            raise RuntimeError(f"undecodable board output: {items}")
        return frames

    def request(self, msg: m.Message, ok: tuple[Status, ...] = (Status.OK,)) -> tuple[Frame, list[Frame]]:
        items = self.send(msg)
        rsp = next(f for f in items if f.type == FrameType.RESPONSE and f.seq == self.seq)
        if rsp.status not in ok:
            raise RuntimeError(f"{type(msg).__name__}: {Status(rsp.status).name} {rsp.payload!r}")
        self.digest = hash((self.digest, rsp.payload))
        return rsp, items


def _ops(engine: FirmwareEngine) -> int:
    c = engine.counters
    return c.set + c.reset + c.reads


def _fit(cells: list[int], seconds: list[float]) -> tuple[float, float]:
    """(us per request, us per cell) of a straight line through (cells, seconds per request)."""
    per_cell, per_request = np.polyfit(np.asarray(cells, dtype=float), np.asarray(seconds) * 1e6, 1)
    return float(per_request), float(per_cell)


def _wv_request(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator) -> m.WriteVerifyRequest:
    e = np.zeros(rows.size, m.WV_ENTRY)
    e["row"], e["col"] = rows, cols
    e["target_s"], e["tol_s"], e["max_pulses"] = rng.uniform(4e-6, 36e-6, rows.size), 1e-6, 100
    return m.WriteVerifyRequest(**_WV, n=rows.size, entries=e)


def run(seed: int = 0, engine_name: str = "fast") -> BenchResult:
    """Build a formed 64x64 board on the named engine and time the operations."""
    engine = ENGINES[engine_name](BoardConfig(rows=64, cols=64, seed=seed))
    engine.poll()
    host = _Host(engine)
    host.request(m.HelloRequest(1, 0))
    rows, cols = np.divmod(np.arange(64 * 64), 64)
    engine.array.form(rows, cols, 3.6, 1000.0, 1.0)  # set-up, not timed: forming 4,096 cells directly
    extra: dict[str, float] = {}

    t0 = time.perf_counter()
    for k in range(1000):
        host.request(m.ReadRequest(k % 64, (k // 64) % 64, 100), ok=(Status.OK, Status.ADC_SATURATED))
    reads_s = time.perf_counter() - t0

    block_rate: dict[str, float] = {}
    fw_cells: list[int] = []
    fw_s: list[float] = []
    block_s = 0.0
    for nr, nc in BLOCKS:
        reps = BLOCK_REPEATS[nr * nc]
        host.firmware_s = 0.0
        t0 = time.perf_counter()
        for _ in range(reps):
            rsp, _ = host.request(m.ReadBlockRequest(0, 0, nr, nc, 100))
        dt = (time.perf_counter() - t0) / reps
        block = decode_payload(rsp)
        if not isinstance(block, m.ReadBlockResult) or block.codes.size != nr * nc:
            raise RuntimeError("READ_BLOCK returned the wrong number of codes")
        block_rate[f"{nr}x{nc}"] = nr * nc / dt
        fw_cells.append(nr * nc)
        fw_s.append(host.firmware_s / reps)
        extra[f"read_block_{nr}x{nc}_fw_us"] = host.firmware_s / reps * 1e6
        if (nr, nc) == (64, 32):
            block_s = dt
    rb_fit = _fit(fw_cells, fw_s)

    rng = np.random.default_rng(seed)
    wv_cells: list[int] = []
    wv_fw: list[float] = []
    wv_s = 0.0
    wv_ops = 0
    wv = None
    for n, row0 in WV_BATCHES:
        idx = np.arange(row0 * 64, row0 * 64 + n)
        req = _wv_request(rows[idx], cols[idx], rng)
        ops0 = _ops(engine)
        host.firmware_s = 0.0
        t0 = time.perf_counter()
        rsp, _ = host.request(req)
        dt = time.perf_counter() - t0
        wv_cells.append(n)
        wv_fw.append(host.firmware_s)
        if n == 512:
            result = decode_payload(rsp)
            assert isinstance(result, m.WriteVerifyResult)
            wv_s, wv_ops, wv = dt, _ops(engine) - ops0, result.results
            extra["wv_512_fw_s"] = host.firmware_s
    assert wv is not None
    wv_fit = _fit(wv_cells, wv_fw)

    stream = m.EnduranceRequest(32, 32, 32, 32, 1_000_000, 10_000, 1200, 100, 1200, -1500, 100, 3300, 100)
    t0 = time.perf_counter()
    bytes0 = host.bytes_in
    rsp, items = host.request(stream)
    started = decode_payload(rsp)
    assert isinstance(started, m.EnduranceStarted)
    events: list[m.EnduranceData | m.EnduranceEnd] = []
    while True:
        events += [
            ev
            for f in items
            if f.type == FrameType.EVENT and isinstance(ev := decode_payload(f), m.EnduranceData | m.EnduranceEnd)
        ]
        if events and isinstance(events[-1], m.EnduranceEnd):
            break
        _, items = host.request(m.StreamAck(started.stream_id, events[-1].event_no + 1))
    host.request(m.StreamAck(started.stream_id, started.n_events + 1))
    endurance_s = time.perf_counter() - t0
    data = [ev for ev in events if isinstance(ev, m.EnduranceData)]
    end = events[-1]
    if len(data) != started.n_events or not isinstance(end, m.EnduranceEnd) or end.cycles_done != 1_000_000:
        raise RuntimeError("endurance stream incomplete")
    last = data[-1]
    window = np.median((last.lrs_codes - last.offset_code) / np.maximum(last.hrs_codes - last.offset_code, 1.0))

    fresh = ENGINES[engine_name](BoardConfig(rows=32, cols=32, seed=seed))  # pristine cells, formed by ramps
    fresh.poll()
    former = _Host(fresh)
    former.request(m.HelloRequest(1, 0))
    t0 = time.perf_counter()
    for k in range(32 * 32):
        former.request(m.FormRequest(k // 32, k % 32, 2000, 4500, 100, 1000, 1000, 100, 5000))
    form_s = (time.perf_counter() - t0) / (32 * 32)
    return BenchResult(
        engine=engine_name,
        reads_1000_s=reads_s,
        read_block_64x32_s=block_s,
        read_block_cells_per_s=block_rate,
        read_block_fw_us_per_request=rb_fit[0],
        read_block_fw_us_per_cell=rb_fit[1],
        write_verify_512_s=wv_s,
        wv_cell_ops=wv_ops,
        wv_cell_ops_per_s=wv_ops / wv_s,
        wv_fw_us_per_request=wv_fit[0],
        wv_fw_us_per_cell=wv_fit[1],
        wv_fw_us_per_cell_op=extra["wv_512_fw_s"] * 1e6 / wv_ops,
        wv_converged_frac=float(np.mean(wv["status"] == 0)),
        wv_mean_pulses=float(wv["pulses"].mean()),
        endurance_1e6x1024_s=endurance_s,
        endurance_events=len(events),
        endurance_bytes=host.bytes_in - bytes0,
        endurance_median_window=float(window),
        form_ramp_ms=form_s * 1e3,
        form_pulses_mean=fresh.counters.form / (32 * 32),
        payload_digest=hash((host.digest, former.digest)),
        extra=extra,
    )


def _print_one(r: BenchResult) -> None:
    print(f"engine: {r.engine}")
    print(
        f"1,000 single READs:                    {r.reads_1000_s:8.3f} s  ({r.reads_1000_s * 1e3 / 1000:.3f} ms each)"
    )
    rates = ", ".join(f"{shape} {rate / 1e6:.3f} M" for shape, rate in r.read_block_cells_per_s.items())
    print(f"READ_BLOCK 64x32 (2,048 cells):        {r.read_block_64x32_s:8.4f} s  (mean of 20)")
    print(f"READ_BLOCK cell-ops/s by shape:        {rates}")
    print(
        f"READ_BLOCK firmware cost:              {r.read_block_fw_us_per_request:8.1f} us per request"
        f" + {r.read_block_fw_us_per_cell:.3f} us per cell"
    )
    print(
        f"WRITE_VERIFY 512 cells:                {r.write_verify_512_s:8.3f} s  "
        f"({r.wv_converged_frac:.1%} converged, {r.wv_mean_pulses:.1f} pulses/cell, "
        f"{r.wv_cell_ops:,} cell-ops, {r.wv_cell_ops_per_s / 1e6:.2f} M cell-ops/s)"
    )
    print(
        f"WRITE_VERIFY firmware cost:            {r.wv_fw_us_per_request:8.1f} us per request"
        f" + {r.wv_fw_us_per_cell:.1f} us per cell ({r.wv_fw_us_per_cell_op:.2f} us per cell-op at 512 cells)"
    )
    print(
        f"ENDURANCE 1e6 cycles x 1,024 cells:    {r.endurance_1e6x1024_s:8.3f} s  "
        f"({r.endurance_events} events, {r.endurance_bytes / 1e6:.2f} MB, final median LRS/HRS {r.endurance_median_window:.1f}x)"
    )
    print(
        f"FORM ramps, 1,024 pristine cells:      {r.form_ramp_ms:8.3f} ms each ({r.form_pulses_mean:.1f} pulses and"
        f" {r.form_pulses_mean + 1:.1f} reads per ramp)"
    )


# (label, figure, larger is better): what `--compare` tabulates
_COMPARED = (
    ("READ_BLOCK 64x32 cell-ops/s", lambda r: r.read_block_cells_per_s["64x32"], True),
    ("READ_BLOCK 32x32 cell-ops/s", lambda r: r.read_block_cells_per_s["32x32"], True),
    ("READ_BLOCK 8x8 cell-ops/s", lambda r: r.read_block_cells_per_s["8x8"], True),
    ("WRITE_VERIFY 512 cell-ops/s", lambda r: r.wv_cell_ops_per_s, True),
    ("READ_BLOCK fw us/request", lambda r: r.read_block_fw_us_per_request, False),
    ("READ_BLOCK fw us/cell", lambda r: r.read_block_fw_us_per_cell, False),
    ("WRITE_VERIFY fw us/cell-op", lambda r: r.wv_fw_us_per_cell_op, False),
    ("1,000 READs s", lambda r: r.reads_1000_s, False),
    ("ENDURANCE s", lambda r: r.endurance_1e6x1024_s, False),
    ("FORM ramp ms", lambda r: r.form_ramp_ms, False),
)


def compare(rounds: int, seed: int) -> list[dict[str, BenchResult]]:
    """Interleaved paired rounds of the reference and the fast engine (the order alternates); same bytes checked."""
    out = []
    for k in range(rounds):
        order = ("reference", "fast") if k % 2 == 0 else ("fast", "reference")
        pair = {name: run(seed, name) for name in order}
        if pair["fast"].payload_digest != pair["reference"].payload_digest:
            raise RuntimeError("the fast engine's responses differ from the reference's")
        out.append(pair)
    print(f"{rounds} interleaved paired rounds (reference = the replaced code, fast = FirmwareEngine); same bytes: yes")
    print(f"{'figure':28} {'reference min-max':>18} {'median':>8} {'fast min-max':>16} {'median':>8} {'paired':>7}")
    for label, get, larger in _COMPARED:
        ref = np.array([get(p["reference"]) for p in out])
        fast = np.array([get(p["fast"]) for p in out])
        gain = np.median(fast / ref if larger else ref / fast)  # the median of the per-round speed-ups
        scale = 1e6 if "cell-ops/s" in label else 1.0
        r, f = ref / scale, fast / scale
        print(
            f"{label:28} {r.min():8.3f}-{r.max():<9.3f} {np.median(r):8.3f} {f.min():7.3f}-{f.max():<8.3f} "
            f"{np.median(f):8.3f} {gain:6.2f}x"
        )
    print("(cell-ops/s in millions; 'paired': median over rounds of fast / reference rate, or reference / fast cost)")
    return out


def main() -> None:
    """Print the timings (and optionally write them as JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=sorted(ENGINES), default="fast", help="which firmware to time (default fast)")
    ap.add_argument("--compare", type=int, metavar="ROUNDS", default=0, help="time reference against fast, interleaved")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.compare < 0:
        ap.error(f"--compare takes a number of rounds >= 1, got {args.compare}")
    if args.compare:
        pairs = compare(args.compare, args.seed)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([{k: asdict(v) for k, v in p.items()} for p in pairs], f, indent=2)
        return
    r = run(args.seed, args.engine)
    _print_one(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(r), f, indent=2)


if __name__ == "__main__":
    main()
