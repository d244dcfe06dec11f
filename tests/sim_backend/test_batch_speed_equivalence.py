"""The simulator's fast batch paths give the chip's records bit for bit as the code they replaced.

`sim_backend.reference_ops.ReferenceEngine` answers every request the old way (separate SET, RESET and read
calls per write-verify round, every relaxation path summed whole, each draw hashed on its own, limits and
handler table rebuilt per request). Each test feeds the same request frames to it and to `FirmwareEngine` on
the same seed and compares every byte the two boards send and, at the end, every array of the chips' states.
Exact equality is the only tolerance: a speed change may not move a single bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from firmware_protocol import Frame, FrameDecoder, FrameType, Status
from firmware_protocol import messages as m
from sim_backend import device_model
from sim_backend.board_config import BoardConfig
from sim_backend.device_model import RRAMArray, VerifyBatch
from sim_backend.device_params import DeviceParams
from sim_backend.firmware import FirmwareEngine
from sim_backend.reference_ops import ReferenceArray, ReferenceEngine
from tests.sim_backend.test_firmware import WV_KW  # the write-verify ramps of the firmware tests

# Relaxation clocks of a microsecond: verify reads fall past the first node of a new relaxation path.
FAST_RELAXATION = DeviceParams(relax_t0_nodes_s=tuple(1e-6 for _ in DeviceParams().relax_g_nodes_us))


class _Clock:
    """A wall clock for the watchdog that moves only when told (both boards must see the same one)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Twins:
    """The fast and the reference firmware of one board, fed the same bytes; every answer compared."""

    def __init__(self, config: BoardConfig, poll: Callable[[], Callable[[], bytes]] | None = None) -> None:
        self.clocks = (_Clock(), _Clock())
        self.fast = FirmwareEngine(config, wall_clock=self.clocks[0])
        self.ref = ReferenceEngine(config, wall_clock=self.clocks[1])
        if poll is not None:  # each board gets its own input line, built the same way
            self.fast.poll_input, self.ref.poll_input = poll(), poll()
        self.seq = 0
        self.both(lambda e: e.poll())
        self.request(m.HelloRequest(1, 0))

    def both(self, act: Callable[[FirmwareEngine], bytes]) -> bytes:
        """Do the same to both boards; their output must be the same bytes."""
        out_fast, out_ref = act(self.fast), act(self.ref)
        assert out_fast == out_ref
        return out_fast

    def tick(self, seconds: float) -> None:
        for c in self.clocks:
            c.t += seconds

    def request(self, msg: m.Message) -> list[Frame]:
        """Send one request to both; returns the frames the (identical) answers decode to."""
        self.seq = self.seq % 0xFFFE + 1
        wire = msg.to_frame(self.seq).encode()
        items = FrameDecoder().feed(self.both(lambda e: e.feed(wire)))
        frames = [f for f in items if isinstance(f, Frame)]
        assert frames and len(frames) == len(items)  # an answer, and nothing undecodable
        return frames

    def status(self, msg: m.Message) -> int:
        rsp = [f for f in self.request(msg) if f.type == FrameType.RESPONSE]
        return rsp[-1].status

    def form(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Form cells directly on both arrays (set-up: one call, as the tests of the firmware do)."""
        self.fast.array.form(rows, cols, 4.0, 1000.0, 1.0)
        self.ref.array.form(rows, cols, 4.0, 1000.0, 1.0)

    def assert_same_chip(self) -> None:
        """Every array of the two chips' states (physics, clock, event counters, pulse counters) byte for byte."""
        a, b = self.fast.export_state(), self.ref.export_state()
        assert a.keys() == b.keys()
        for key in a:
            x, y = np.asarray(a[key]), np.asarray(b[key])
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert x.tobytes() == y.tobytes(), f"{key} differs"


def _wv(rows: np.ndarray, cols: np.ndarray, target: np.ndarray, tol: float, max_pulses, **kw: int):
    e = np.zeros(rows.size, m.WV_ENTRY)
    e["row"], e["col"], e["target_s"], e["tol_s"], e["max_pulses"] = rows, cols, target, tol, max_pulses
    return m.WriteVerifyRequest(**{**WV_KW, **kw}, n=rows.size, entries=e)


def _cells(n_rows: int, n_cols: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    keep = (rr < n_rows) & (cc < n_cols)
    return rr[keep], cc[keep]


def test_read_block_and_read_equal_the_reference_at_every_age() -> None:
    """Blocks of every shape and single reads, from just after forming to a year later (every path segment)."""
    t = Twins(BoardConfig(rows=20, cols=16, seed=5))
    rows, cols = _cells(20, 14, 20, 16)  # columns 14, 15 stay pristine: blocks mix relaxing and unformed cells
    t.form(rows, cols)
    for wait_us in (0, 30, 2_000, 1_000_000, 3_600_000_000, 86_400_000_000, 31_536_000_000_000):
        t.request(m.AdvanceClockRequest(wait_us))
        for block in ((0, 0, 20, 16), (3, 2, 4, 5), (19, 15, 1, 1), (0, 13, 20, 3), (5, 0, 1, 16)):
            t.request(m.ReadBlockRequest(*block, 100))
        t.request(m.ReadBlockRequest(0, 0, 20, 16, 250))  # another read voltage
        for r, c in ((0, 0), (7, 9), (11, 3)):
            t.request(m.ReadRequest(r, c, 100))
    t.assert_same_chip()


@pytest.mark.parametrize(
    "params, seed",
    [
        (DeviceParams(), 11),
        (DeviceParams(spatial_sigma=0.08, spatial_length_cells=3.0), 12),  # the spatial gain field
        (DeviceParams(relax_mu_coeffs_us=(0.4, -0.9)), 13),  # a relaxation drift: no first-segment fast path
        # t0 of microseconds: verify reads land in later path segments, so lazily drawn paths are completed mid-batch
        (FAST_RELAXATION, 14),
        (DeviceParams(stuck_lrs_frac=0.15, stuck_hrs_frac=0.15, form_fail_frac=0.2), 15),  # stuck and unformed cells
        (DeviceParams(weibull_scale=3.0, weibull_shape=1.0), 16),  # cells wear out during the batch
    ],
    ids=["default", "spatial", "drift", "fast-relaxation", "stuck", "wear-out"],
)
def test_write_verify_equals_the_reference(params: DeviceParams, seed: int) -> None:
    """Batches with mixed SETs and RESETs, mixed pulse budgets, then reads of the result and a second batch."""
    t = Twins(BoardConfig(rows=8, cols=8, seed=seed, device=params))
    rows, cols = _cells(8, 8, 8, 8)
    t.form(rows[:56], cols[:56])  # the last row's cells are never formed: NOT_FORMED entries
    rng = np.random.default_rng(seed)
    order = rng.permutation(64)[:48]  # entries in no particular order
    budget = rng.choice([1, 3, 12, 40], size=48)
    target = rng.uniform(3e-6, 38e-6, 48)
    t.request(_wv(rows[order], cols[order], target, 0.8e-6, budget))
    t.request(m.ReadBlockRequest(0, 0, 8, 8, 100))
    t.request(m.AdvanceClockRequest(5_000_000))
    t.request(_wv(rows[order[:20]], cols[order[:20]], target[::-1][:20], 0.5e-6, 25))
    t.request(m.ReadBlockRequest(0, 0, 8, 8, 100))
    t.assert_same_chip()


@pytest.mark.parametrize("pairs", [0, 512, 1 << 20], ids=["eight-rounds", "mixed", "whole-budget"])
def test_write_verify_equals_the_reference_however_many_rounds_a_refill_draws(
    pairs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refill draws eight rounds (the fewest), a number that changes as cells leave, or the whole remaining
    pulse budget at once: the records are the same bytes."""
    monkeypatch.setattr(device_model, "_REFILL_PAIRS", pairs)
    t = Twins(BoardConfig(rows=8, cols=8, seed=17))
    rows, cols = _cells(8, 8, 8, 8)
    t.form(rows, cols)
    target = np.random.default_rng(17).uniform(3e-6, 38e-6, 64)
    t.request(_wv(rows, cols, target, 0.5e-6, np.random.default_rng(18).choice([5, 30, 60], size=64)))
    t.request(m.ReadBlockRequest(0, 0, 8, 8, 100))
    t.assert_same_chip()


def test_write_verify_with_zero_volt_ramp_steps_and_reference_resistors_equals_the_reference() -> None:
    """A SET and a RESET ramp that start at 0 V (pulses that switch nothing), reference resistors in the batch,
    a 1 us pulse width and a verify read at another voltage."""
    cfg = BoardConfig(rows=6, cols=6, seed=21, reference_cells=((0, 0, 50e3), (2, 3, 200e3)))
    t = Twins(cfg)
    rows, cols = _cells(6, 6, 6, 6)
    t.form(rows, cols)
    kw = dict(set_v_start_mv=0, set_v_step_mv=300, set_v_stop_mv=1500, reset_v_start_mv=0, reset_v_step_mv=-200)
    target = np.random.default_rng(1).uniform(4e-6, 30e-6, 36)
    t.request(_wv(rows, cols, target, 1e-6, 30, width_ns=1000, v_read_mv=150, **kw))
    t.request(m.ReadBlockRequest(0, 0, 6, 6, 100))
    t.assert_same_chip()


def _moving_batch(rows: np.ndarray, cols: np.ndarray) -> m.WriteVerifyRequest:
    """A mid-window target, a tight tolerance and strong pulses both ways: every pulse overshoots, so every cell
    moves (and gets a new relaxation path) in every round."""
    return _wv(rows, cols, np.full(rows.size, 15e-6), 0.1e-6, 30, set_gate_start_mv=1300, reset_v_start_mv=-1300)


@pytest.mark.parametrize("params", [DeviceParams(), FAST_RELAXATION], ids=["default", "fast-relaxation"])
def test_write_verify_whose_every_cell_moves_every_round_equals_the_reference(params: DeviceParams) -> None:
    """The common case the fast path is for: every pulse moves its cell, every cell gets a new relaxation path
    (with t0 of microseconds the reads fall past the path's first node: the batch follows its cells into the
    path's later segments)."""
    t = Twins(BoardConfig(rows=8, cols=8, seed=51, device=params))
    rows, cols = _cells(8, 8, 8, 8)
    t.form(rows, cols)
    t.request(_moving_batch(rows, cols))
    t.request(m.ReadBlockRequest(0, 0, 8, 8, 100))
    t.request(_moving_batch(rows[::-1], cols[::-1]))
    t.assert_same_chip()


def test_batch_relaxation_follows_its_cells_down_and_up_the_path_segments() -> None:
    """The batch's relaxed conductance equals `RRAMArray._g_at` at any time, also when a cell's L moves back to
    an earlier segment of its path (t0 grows with a small shift of g0, so L can fall); checked here at times
    that go out to the path's last segment and back to its first, the segment the batch keeps moving both ways."""
    from sim_backend.device_model import VerifyRamps

    a = RRAMArray(4, 4, DeviceParams(), seed=7)
    rows, cols = a.all_cells()
    a.form(rows, cols, 4.0, 1000.0, 1.0)
    ramps = VerifyRamps(100.0, np.full(4, 1.0), np.full(4, 1.2), np.full(4, -1.2))
    batch = a.verify_batch(rows, cols, np.full(rows.size, a.clock_ns + 1000, dtype=np.int64), ramps)
    batch.begin(0.1)
    assert batch._on.all()  # the batch's own path, not `_conductance`
    t_prog = a._t_prog[batch._idx]
    segments = []
    for dt in (1e-9, 1e-3, 10.0, 1e4, 1e9, 1e12, 3.0, 1e-6, 1e3, 1e-9):
        t = t_prog + dt * np.linspace(0.5, 2.0, rows.size)
        got = batch._relaxed_now(t, batch._g0, batch._on, None)
        assert got.tobytes() == a._g_at(batch._idx, t).tobytes(), dt
        segments.append(batch._lo.copy())
    batch.close()
    deepest = np.max(segments, axis=0)
    assert deepest.min() >= 5.0 and (segments[-1] == 0.0).all()  # out to late segments, and back to the first
    assert any((later < earlier).any() for earlier, later in zip(segments, segments[1:]))


def test_aborted_and_expired_write_verify_equal_the_reference() -> None:
    """ABORT heard in the middle of a batch, and a host that falls silent: the same rounds done, the same answers."""
    abort = m.AbortRequest().to_frame(0x7000).encode()

    def line() -> Callable[[], bytes]:
        polls = {"n": 0}

        def poll() -> bytes:
            polls["n"] += 1
            return abort if polls["n"] == 6 else b""  # the ABORT arrives before the 6th round

        return poll

    t = Twins(BoardConfig(rows=6, cols=6, seed=31), poll=line)
    rows, cols = _cells(6, 6, 6, 6)
    t.form(rows, cols)
    items = t.request(_wv(rows, cols, np.full(36, 1e-3), 1e-9, 50))  # unreachable: every cell keeps going
    assert [f.status for f in items if f.type == FrameType.RESPONSE] == [Status.ABORTED, Status.OK]

    silent = Twins(BoardConfig(rows=6, cols=6, seed=32, watchdog_ms=1000), poll=lambda: lambda: b"")
    silent.form(rows, cols)
    rounds = {"n": 0}

    def slow_keep_going(engine: FirmwareEngine) -> Callable[[], bool]:
        inner = engine._keep_going

        def keep_going() -> bool:
            if engine is silent.fast:
                rounds["n"] += 1
            engine._clock.t += 0.15  # type: ignore[attr-defined]  # each round takes 150 ms of wall time
            return inner()

        return keep_going

    for engine in (silent.fast, silent.ref):
        engine._keep_going = slow_keep_going(engine)  # type: ignore[method-assign]
    items = silent.request(_wv(rows, cols, np.full(36, 1e-3), 1e-9, 50))
    assert Status.ABORTED in [f.status for f in items if f.type == FrameType.RESPONSE] and rounds["n"] < 50
    t.assert_same_chip()
    silent.assert_same_chip()


def test_other_operations_on_the_shared_relaxation_code_equal_the_reference() -> None:
    """FORM, SET, RESET, I-V sweeps and an ENDURANCE stream (they use the rewritten `_g_at`) after write-verify."""
    t = Twins(BoardConfig(rows=6, cols=6, seed=41))
    for r in range(3):
        t.request(m.FormRequest(r, r, 2400, 4500, 100, 1000, 1000, 100, 5000))
    rows, cols = _cells(6, 6, 6, 6)
    t.form(rows[6:], cols[6:])
    t.request(_wv(rows[6:], cols[6:], np.linspace(5e-6, 30e-6, 30), 1e-6, 20))
    t.request(m.AdvanceClockRequest(40_000))
    t.request(m.SetRequest(1, 1, 1200, 100, 1000))
    t.request(m.ResetRequest(2, 2, -1500, 100, 3300))
    t.request(m.IvSweepRequest(3, 3, -800, 800, 9, 100, 1000, 0))
    started = [f for f in t.request(m.EnduranceRequest(2, 0, 2, 6, 400, 100, 1200, 100, 1200, -1500, 100, 3300, 100))]
    assert started[0].status == Status.OK
    for next_event in range(1, 7):  # 4 read points of 12 cells, then the end event
        t.request(m.StreamAck(1, next_event))
    t.assert_same_chip()


def _crafted_pair(seed: int) -> tuple[RRAMArray, ReferenceArray]:
    """Two identical 5x5 arrays, some cells relaxing, some pristine with a programmed value below g_floor."""
    fast, ref = RRAMArray(5, 5, seed=seed), ReferenceArray(5, 5, seed=seed)
    rows, cols = _cells(5, 3, 5, 5)
    for a in (fast, ref):
        a.form(rows, cols, 4.0, 1000.0, 1.0)
    state = fast.export_state()
    g0 = state["_g0"].copy()
    g0[[3, 4, 9]] = (
        3e-10  # pristine cells (not relaxing) below the floor: `_g_at` floors them only beside relaxing ones
    )
    state["_g0"] = g0
    for a in (fast, ref):
        a.import_state(state)
    return fast, ref


@pytest.mark.parametrize("seed", [1, 2])
def test_array_reads_equal_the_reference_for_every_calling_pattern(seed: int) -> None:
    """read_current with repeated cells, explicit times, per-cell voltages, mixed relaxing and floored cells."""
    fast, ref = _crafted_pair(seed)
    calls: list[Callable[[RRAMArray], np.ndarray]] = [
        lambda a: a.read_current([0, 0, 1, 0], [3, 3, 1, 3], 0.1),  # a cell listed three times
        lambda a: a.read_current([0, 1], [3, 4], 0.1),  # only cells that do not relax: no floor
        lambda a: a.read_current([0, 0, 2], [4, 0, 1], np.array([0.05, 0.1, 0.2])),
        lambda a: a.read_current(np.arange(5), np.arange(5), 0.1, at_ns=a.clock_ns + 10 ** np.arange(5)),
        lambda a: a.read_current(*_cells(5, 5, 5, 5), 0.3),
        lambda a: a.conductance(*_cells(5, 5, 5, 5)),
    ]
    for wait_s in (0.0, 1e-3, 50.0, 1e7):
        fast.advance(wait_s)
        ref.advance(wait_s)
        for call in calls:
            assert call(fast).tobytes() == call(ref).tobytes()
    for key, value in fast.export_state().items():
        assert value.tobytes() == ref.export_state()[key].tobytes(), key


def test_equivalence_covers_what_it_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenarios above reach the paths they are there for (else they could pass for the wrong reason)."""
    completed: list[int] = []
    draw = VerifyBatch._draw_paths

    def spy(self: VerifyBatch, ps: np.ndarray) -> None:
        completed.append(ps.size)
        draw(self, ps)

    monkeypatch.setattr(VerifyBatch, "_draw_paths", spy)
    calls = {"now": 0, "general": 0}
    relaxed_now, general = VerifyBatch._relaxed_now, VerifyBatch._conductance

    def spy_now(self: VerifyBatch, *args: np.ndarray) -> np.ndarray:
        calls["now"] += 1
        return relaxed_now(self, *args)

    def spy_general(self: VerifyBatch, *args: np.ndarray) -> np.ndarray:
        calls["general"] += 1
        return general(self, *args)

    monkeypatch.setattr(VerifyBatch, "_relaxed_now", spy_now)
    monkeypatch.setattr(VerifyBatch, "_conductance", spy_general)
    moving = Twins(BoardConfig(rows=8, cols=8, seed=51))
    moving.form(*_cells(8, 8, 8, 8))
    moving.request(_moving_batch(*_cells(8, 8, 8, 8)))
    assert calls["now"] - calls["general"] >= 20  # the first-segment fast path ran (for pulses and reads)
    t = Twins(BoardConfig(rows=4, cols=4, seed=14, device=FAST_RELAXATION))
    t.form(*_cells(4, 4, 4, 4))
    t.request(_wv(*_cells(4, 4, 4, 4), np.full(16, 35e-6), 0.3e-6, 10, set_gate_start_mv=1000))  # SETs that move
    assert len(completed) >= 2  # lazily drawn paths completed mid-batch (a read past their first node), then at close
    worn = Twins(BoardConfig(rows=8, cols=8, seed=16, device=DeviceParams(weibull_scale=3.0, weibull_shape=1.0)))
    rows, cols = _cells(8, 8, 8, 8)
    worn.form(rows[:56], cols[:56])
    stuck_before = int((worn.fast.array.stuck_lrs | worn.fast.array.stuck_hrs).sum())
    rng = np.random.default_rng(16)  # the first batch of the wear-out case above
    order = rng.permutation(64)[:48]
    budget = rng.choice([1, 3, 12, 40], size=48)
    worn.request(_wv(rows[order], cols[order], rng.uniform(3e-6, 38e-6, 48), 0.8e-6, budget))
    assert int((worn.fast.array.stuck_lrs | worn.fast.array.stuck_hrs).sum()) > stuck_before  # cells wore out in it
    stuck = RRAMArray(8, 8, DeviceParams(stuck_lrs_frac=0.15, stuck_hrs_frac=0.15, form_fail_frac=0.2), seed=15)
    assert stuck.stuck_start_lrs.any() and stuck.stuck_start_hrs.any() and (~stuck.can_form).any()


def test_reference_engine_is_really_the_old_code() -> None:
    """The twin is not the fast code under another name: its batch handler and array methods are the old ones."""
    ref = ReferenceEngine(replace(BoardConfig(), rows=4, cols=4))
    assert type(ref.array) is ReferenceArray
    assert ReferenceArray.read_current is not RRAMArray.read_current and ReferenceArray._g_at is not RRAMArray._g_at
    from firmware_protocol import Opcode

    assert ref._handlers()[Opcode.WRITE_VERIFY].__name__ == "_write_verify_reference"
    assert ref._handlers()[Opcode.READ_BLOCK].__name__ == "_read_block_reference"
