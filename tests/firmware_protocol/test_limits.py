"""BoardLimits: built from HELLO, every request type checked against the declared envelope."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol import BoardLimits, LimitError
from firmware_protocol.limits import CLOCK_MAX_NS, CLOCK_MAX_US, SemanticLimitError
from firmware_protocol.messages import (
    WV_ENTRY,
    AbortRequest,
    AdvanceClockRequest,
    CountersRequest,
    EnduranceRequest,
    FormRequest,
    HeartbeatRequest,
    HelloInfo,
    HelloRequest,
    IvSweepRequest,
    ReadBlockRequest,
    ReadRequest,
    ResetRequest,
    SetRequest,
    StreamAck,
    StreamResend,
    WriteVerifyRequest,
    max_block_cells,
    max_wv_entries,
)

I16 = st.integers(-(2**15), 2**15 - 1)


def _hello(**overrides: int) -> HelloInfo:
    """HelloInfo with the simulated board's default limits (PROTOCOL.md 6.1)."""
    info = HelloInfo(
        1,
        0,
        1,
        0,
        0,
        "SIM-RRAM",
        0xDEADBEEF,
        0x0F,
        64,
        64,
        12,
        16,
        0,
        3000,
        -3000,
        0,
        0,
        5000,
        0,
        300,
        0,
        3300,
        10,
        1_000_000,
        10,
        500_000,
        8192,
        2000,
        8,
        512,
        10_000,
        60_000,
        10_000_000,
    )
    return replace(info, **overrides)  # type: ignore[arg-type]  # only int fields are overridden


LIM = BoardLimits.from_hello(_hello())


def _rejects(msg: object, *fragments: str, limits: BoardLimits = LIM) -> None:
    with pytest.raises(LimitError) as exc:
        limits.check(msg)  # type: ignore[arg-type]
    text = str(exc.value)
    assert "\n" not in text
    for f in fragments:
        assert f in text, f"{f!r} not in {text!r}"


def _endurance(**kw: int) -> EnduranceRequest:
    args = dict(
        row0=0,
        col0=0,
        nrows=4,
        ncols=4,
        n_cycles=1000,
        read_every=10,
        set_v_mv=1500,
        set_width_ns=100,
        set_gate_mv=1200,
        reset_v_mv=-1800,
        reset_width_ns=100,
        reset_gate_mv=3300,
        v_read_mv=100,
    )
    args.update(kw)
    return EnduranceRequest(**args)


def _wv(n: int = 3, entries: np.ndarray | None = None, **kw: int) -> WriteVerifyRequest:
    if entries is None:
        entries = np.zeros(n, WV_ENTRY)
        entries["row"] = np.arange(n) % 64
        entries["col"] = np.arange(n) // 64
        entries["target_s"] = 50e-6
        entries["tol_s"] = 2e-6
        entries["max_pulses"] = 20
    args = dict(
        v_read_mv=100,
        width_ns=100,
        set_v_start_mv=800,
        set_v_stop_mv=2000,
        set_v_step_mv=50,
        set_gate_start_mv=900,
        set_gate_stop_mv=1500,
        set_gate_step_mv=25,
        reset_v_start_mv=-800,
        reset_v_stop_mv=-2500,
        reset_v_step_mv=-50,
        reset_gate_mv=3300,
    )
    args.update(kw)
    return WriteVerifyRequest(**args, n=len(entries), entries=entries)


# ------------------------------------------------------------------------------- from_hello
def test_from_hello_copies_the_envelope() -> None:
    assert (LIM.rows, LIM.cols) == (64, 64)
    assert LIM.set_v == (0, 3000) and LIM.reset_v == (-3000, 0) and LIM.form_v == (0, 5000)
    assert LIM.read_v == (0, 300) and LIM.gate_v == (0, 3300)
    assert (LIM.width_min_ns, LIM.width_max_ns, LIM.width_step_ns) == (10, 1_000_000, 10)
    assert LIM.max_payload == 8192
    assert LIM.max_wv_batch == 512  # the board's own limit is below the 583 entries a frame could carry


def test_from_hello_caps_the_batch_by_what_fits_one_frame() -> None:
    small = BoardLimits.from_hello(_hello(max_payload=512, max_wv_batch=512))
    assert max_wv_entries(512) == min((512 - 28) // 14, (512 - 10) // 9) == 34
    assert small.max_wv_batch == 34
    _rejects(_wv(35), "write-verify batch of 35 cells: use 1 to 34", limits=small)
    small.check(_wv(34))


def test_requests_without_limits_always_pass() -> None:
    for msg in (
        HelloRequest(1, 0),
        HeartbeatRequest(0),
        HeartbeatRequest(65535),
        CountersRequest(),
        StreamAck(1, 5),
        StreamResend(1, 4),
        AbortRequest(),
        AdvanceClockRequest(CLOCK_MAX_US),  # the whole clock range at once: the board checks where its clock is
    ):
        LIM.check(msg)


# ------------------------------------------------------------------------------- SET / RESET
def test_in_range_pulses_pass() -> None:
    LIM.check(SetRequest(0, 0, 1500, 100, 1200))
    LIM.check(SetRequest(63, 63, 3000, 1_000_000, 3300))
    LIM.check(ResetRequest(10, 20, -3000, 10, 0))
    LIM.check(ResetRequest(10, 20, 0, 10, 3300))


@settings(max_examples=200, deadline=None)
@given(v=I16)
def test_any_set_voltage_inside_passes_and_outside_fails(v: int) -> None:
    msg = SetRequest(1, 2, v, 100, 1200)
    if 0 <= v <= 3000:
        LIM.check(msg)
    else:
        _rejects(msg, f"SET voltage {v / 1000:.3f} V is outside the board's range [0.000, 3.000] V")


@settings(max_examples=200, deadline=None)
@given(v=I16)
def test_any_reset_voltage_inside_passes_and_outside_fails(v: int) -> None:
    msg = ResetRequest(1, 2, v, 100, 3300)
    if -3000 <= v <= 0:
        LIM.check(msg)
    else:
        _rejects(msg, f"RESET voltage {v / 1000:.3f} V is outside the board's range [-3.000, 0.000] V")


def test_set_polarity_is_enforced() -> None:
    _rejects(SetRequest(0, 0, -500, 100, 1200), "SET voltage -0.500 V")
    _rejects(ResetRequest(0, 0, 500, 100, 3300), "RESET voltage 0.500 V is outside")
    _rejects(SetRequest(0, 0, 3500, 100, 1200), "SET voltage 3.500 V is outside the board's range [0.000, 3.000] V")


@settings(max_examples=300, deadline=None)
@given(w=st.one_of(st.integers(0, 2_000_000), st.integers(0, 2**32 - 1)))
def test_any_width_passes_iff_inside_and_on_the_grid(w: int) -> None:
    msg = SetRequest(0, 0, 1000, w, 1000)
    if not 10 <= w <= 1_000_000:
        _rejects(msg, f"pulse width {w} ns is outside [10, 1000000] ns")
    elif w % 10:
        _rejects(msg, f"pulse width {w} ns is not a multiple of the 10 ns step")
    else:
        LIM.check(msg)


def test_width_grid_is_anchored_at_zero_not_at_the_minimum() -> None:
    lim = BoardLimits.from_hello(_hello(width_min_ns=25, width_step_ns=10))
    _rejects(SetRequest(0, 0, 1000, 25, 1000), "pulse width 25 ns is not a multiple of the 10 ns step", limits=lim)
    lim.check(SetRequest(0, 0, 1000, 30, 1000))
    _rejects(SetRequest(0, 0, 1000, 20, 1000), "pulse width 20 ns is outside [25, 1000000] ns", limits=lim)


@pytest.mark.parametrize("gate", [3301, 5000, 65535])
def test_gate_above_the_limit_fails(gate: int) -> None:
    _rejects(
        SetRequest(0, 0, 1000, 100, gate),
        f"gate voltage {gate / 1000:.3f} V is outside the board's range [0.000, 3.300] V",
    )
    _rejects(ResetRequest(0, 0, -1000, 100, gate), "gate voltage")


def test_gate_below_a_nonzero_minimum_fails() -> None:
    lim = BoardLimits.from_hello(_hello(gate_v_min_mv=500))
    _rejects(
        SetRequest(0, 0, 1000, 100, 499),
        "gate voltage 0.499 V is outside the board's range [0.500, 3.300] V",
        limits=lim,
    )


@pytest.mark.parametrize(("row", "col"), [(64, 0), (0, 64), (64, 64), (65535, 3)])
def test_cell_outside_the_array_fails(row: int, col: int) -> None:
    _rejects(SetRequest(row, col, 1000, 100, 1000), f"cell ({row}, {col}) is outside the 64x64 array")
    _rejects(ReadRequest(row, col, 100), f"cell ({row}, {col}) is outside the 64x64 array")


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 300), cols=st.integers(1, 300), row=st.integers(0, 400), col=st.integers(0, 400))
def test_cell_check_follows_the_declared_geometry(rows: int, cols: int, row: int, col: int) -> None:
    lim = BoardLimits.from_hello(_hello(rows=rows, cols=cols))
    msg = ReadRequest(row, col, 100)
    if row < rows and col < cols:
        lim.check(msg)
    else:
        _rejects(msg, f"cell ({row}, {col}) is outside the {rows}x{cols} array", limits=lim)


# ------------------------------------------------------------------------------- FORM
def _form(**kw: int) -> FormRequest:
    args = dict(
        row=5,
        col=6,
        v_start_mv=1000,
        v_stop_mv=4000,
        v_step_mv=100,
        width_ns=1000,
        gate_mv=1000,
        v_read_mv=100,
        g_formed_ns=20_000,
    )
    args.update(kw)
    return FormRequest(**args)


def test_form_in_range_passes() -> None:
    LIM.check(_form())
    LIM.check(_form(v_start_mv=5000, v_stop_mv=5000))  # a single pulse at the top of the range


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"v_start_mv": -100}, "FORM start voltage -0.100 V is outside the board's range [0.000, 5.000] V"),
        ({"v_stop_mv": 5001}, "FORM stop voltage 5.001 V is outside the board's range [0.000, 5.000] V"),
        ({"v_step_mv": 0}, "FORM ramp needs v_step > 0 and v_stop >= v_start"),
        ({"v_step_mv": -50}, "FORM ramp needs v_step > 0"),
        ({"v_start_mv": 3000, "v_stop_mv": 2000}, "FORM ramp needs v_step > 0 and v_stop >= v_start"),
        ({"width_ns": 1005}, "pulse width 1005 ns is not a multiple of the 10 ns step"),
        ({"gate_mv": 3400}, "gate voltage 3.400 V"),
        ({"v_read_mv": 301}, "read voltage 0.301 V is outside the board's range [0.000, 0.300] V"),
        ({"row": 64}, "cell (64, 6) is outside the 64x64 array"),
    ],
)
def test_form_out_of_range_fields_fail(kw: dict, fragment: str) -> None:
    _rejects(_form(**kw), fragment)


# ------------------------------------------------------------------------------- READ / READ_BLOCK
@settings(max_examples=150, deadline=None)
@given(v=I16)
def test_any_read_voltage_inside_passes_and_outside_fails(v: int) -> None:
    msg = ReadRequest(0, 0, v)
    if 0 < v <= 300:
        LIM.check(msg)
    elif v == 0:
        _rejects(msg, "read voltage 0.000 V must be positive")
    else:
        _rejects(msg, f"read voltage {v / 1000:.3f} V is outside the board's range [0.000, 0.300] V")


def test_read_block_in_range_passes() -> None:
    LIM.check(ReadBlockRequest(0, 0, 10, 10, 100))
    LIM.check(ReadBlockRequest(0, 0, 63, 64, 100))  # 4032 cells <= 4083
    LIM.check(ReadBlockRequest(63, 63, 1, 1, 300))


@pytest.mark.parametrize(
    ("req", "fragment"),
    [
        (ReadBlockRequest(0, 0, 0, 4, 100), "block 0x4 is empty"),
        (ReadBlockRequest(0, 0, 4, 0, 100), "block 4x0 is empty"),
        (ReadBlockRequest(60, 0, 10, 4, 100), "block rows 60:70, cols 0:4 is outside the 64x64 array"),
        (ReadBlockRequest(0, 63, 1, 2, 100), "block rows 0:1, cols 63:65 is outside the 64x64 array"),
        (ReadBlockRequest(0, 0, 64, 64, 100), "block of 4096 cells exceeds 4083 cells per READ_BLOCK"),
        (ReadBlockRequest(0, 0, 8, 8, 400), "read voltage 0.400 V is outside"),
    ],
)
def test_read_block_out_of_range_fails(req: ReadBlockRequest, fragment: str) -> None:
    _rejects(req, fragment)


@settings(max_examples=200, deadline=None)
@given(
    r0=st.integers(0, 80),
    c0=st.integers(0, 80),
    nr=st.integers(0, 80),
    nc=st.integers(0, 80),
    payload=st.sampled_from([512, 2048, 8192]),
)
def test_read_block_passes_iff_inside_and_fits_one_frame(r0: int, c0: int, nr: int, nc: int, payload: int) -> None:
    lim = BoardLimits.from_hello(_hello(max_payload=payload))
    ok = nr >= 1 and nc >= 1 and r0 + nr <= 64 and c0 + nc <= 64 and nr * nc <= max_block_cells(payload)
    msg = ReadBlockRequest(r0, c0, nr, nc, 100)
    if ok:
        lim.check(msg)
    else:
        with pytest.raises(LimitError, match="block"):
            lim.check(msg)


def test_block_limit_follows_max_payload() -> None:
    lim = BoardLimits.from_hello(_hello(max_payload=512))
    assert max_block_cells(512) == (512 - 26) // 2 == 243
    lim.check(ReadBlockRequest(0, 0, 3, 64, 100))  # 192 cells
    _rejects(ReadBlockRequest(0, 0, 4, 64, 100), "block of 256 cells exceeds 243 cells per READ_BLOCK", limits=lim)


# ------------------------------------------------------------------------------- IV_SWEEP
def _iv(**kw: int) -> IvSweepRequest:
    args = dict(row=1, col=1, v_start_mv=-1500, v_stop_mv=1500, n_points=101, width_ns=1000, gate_mv=1200, mode=0)
    args.update(kw)
    return IvSweepRequest(**args)


def test_iv_sweep_in_range_passes() -> None:
    LIM.check(_iv())
    LIM.check(_iv(v_start_mv=-3000, v_stop_mv=3000, n_points=2))
    LIM.check(_iv(n_points=1024))
    LIM.check(_iv(mode=1, width_ns=5))  # DC hold time is not a pulse width: not grid-checked


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"v_start_mv": -3001}, "sweep start voltage -3.001 V is outside the board's range [-3.000, 3.000] V"),
        ({"v_stop_mv": 3001}, "sweep stop voltage 3.001 V is outside the board's range [-3.000, 3.000] V"),
        ({"n_points": 1}, "I-V sweep of 1 points: use 2 to 1024"),
        ({"n_points": 1025}, "I-V sweep of 1025 points: use 2 to 1024"),
        ({"mode": 2}, "I-V sweep mode 2: 0 = pulsed, 1 = DC"),
        ({"width_ns": 5}, "pulse width 5 ns is outside [10, 1000000] ns"),
        ({"gate_mv": 3500}, "gate voltage 3.500 V"),
        ({"col": 70}, "cell (1, 70) is outside the 64x64 array"),
    ],
)
def test_iv_sweep_out_of_range_fails(kw: dict, fragment: str) -> None:
    _rejects(_iv(**kw), fragment)


@settings(max_examples=150, deadline=None)
@given(a=I16, b=I16)
def test_iv_sweep_ends_must_both_lie_in_reset_min_to_set_max(a: int, b: int) -> None:
    msg = _iv(v_start_mv=a, v_stop_mv=b)
    if -3000 <= a <= 3000 and -3000 <= b <= 3000:
        LIM.check(msg)
    else:
        _rejects(msg, "sweep start voltage" if not -3000 <= a <= 3000 else "sweep stop voltage")


# ------------------------------------------------------------------------------- ENDURANCE
def test_endurance_in_range_passes() -> None:
    LIM.check(_endurance())
    LIM.check(_endurance(nrows=64, ncols=64, cells_per_event=100))  # streams split large blocks over events


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"n_cycles": 0}, "endurance needs n_cycles >= 1 and read_every >= 1"),
        ({"read_every": 0}, "endurance needs n_cycles >= 1 and read_every >= 1"),
        ({"set_v_mv": -100}, "SET voltage -0.100 V is outside"),
        ({"set_v_mv": 3001}, "SET voltage 3.001 V is outside"),
        ({"reset_v_mv": 200}, "RESET voltage 0.200 V is outside the board's range [-3.000, 0.000] V"),
        ({"set_width_ns": 7}, "pulse width 7 ns is outside"),
        ({"reset_width_ns": 2_000_000}, "pulse width 2000000 ns is outside [10, 1000000] ns"),
        ({"reset_width_ns": 155}, "pulse width 155 ns is not a multiple of the 10 ns step"),
        ({"set_gate_mv": 4000}, "gate voltage 4.000 V"),
        ({"reset_gate_mv": 3301}, "gate voltage 3.301 V"),
        ({"v_read_mv": -10}, "read voltage -0.010 V is outside"),
        ({"row0": 62, "nrows": 4}, "block rows 62:66, cols 0:4 is outside the 64x64 array"),
        ({"ncols": 0}, "block 4x0 is empty"),
    ],
)
def test_endurance_out_of_range_fails(kw: dict, fragment: str) -> None:
    _rejects(_endurance(**kw), fragment)


# ------------------------------------------------------------------------------- WRITE_VERIFY
def test_write_verify_in_range_passes() -> None:
    LIM.check(_wv(1))
    LIM.check(_wv(512))
    LIM.check(_wv(3, set_v_step_mv=0, set_gate_step_mv=0, reset_v_step_mv=0))  # constant pulses are allowed


@pytest.mark.parametrize("n", [0, 513, 583, 600])
def test_write_verify_batch_size_is_limited(n: int) -> None:
    _rejects(_wv(n), f"write-verify batch of {n} cells: use 1 to 512")


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"v_read_mv": 500}, "read voltage 0.500 V is outside"),
        ({"width_ns": 101}, "pulse width 101 ns is not a multiple of the 10 ns step"),
        ({"set_v_start_mv": -10}, "SET ramp start -0.010 V is outside the board's range [0.000, 3.000] V"),
        ({"set_v_stop_mv": 3100}, "SET ramp stop 3.100 V is outside the board's range [0.000, 3.000] V"),
        ({"reset_v_start_mv": 100}, "RESET ramp start 0.100 V is outside the board's range [-3.000, 0.000] V"),
        ({"reset_v_stop_mv": -3200}, "RESET ramp stop -3.200 V is outside"),
        ({"set_gate_start_mv": 3400}, "gate voltage 3.400 V"),
        ({"set_gate_stop_mv": 3400}, "gate voltage 3.400 V"),
        ({"reset_gate_mv": 3400}, "gate voltage 3.400 V"),
        ({"set_v_step_mv": -10}, "write-verify ramps must grow: SET steps >= 0, RESET step <= 0"),
        ({"reset_v_step_mv": 10}, "write-verify ramps must grow: SET steps >= 0, RESET step <= 0"),
    ],
)
def test_write_verify_out_of_range_settings_fail(kw: dict, fragment: str) -> None:
    _rejects(_wv(4, **kw), fragment)


def test_write_verify_negative_gate_step_fails_before_encoding() -> None:
    _rejects(_wv(2, set_gate_step_mv=-5), "write-verify ramps must grow")


@pytest.mark.parametrize(("field", "value"), [("row", 64), ("col", 100)])
def test_write_verify_entry_outside_the_array_is_named(field: str, value: int) -> None:
    req = _wv(5)
    req.entries[3][field] = value
    r, c = int(req.entries["row"][3]), int(req.entries["col"][3])
    _rejects(req, f"cell ({r}, {c}) is outside the 64x64 array")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_s", 0.0),
        ("target_s", -1e-6),
        ("target_s", math.nan),
        ("target_s", math.inf),
        ("tol_s", 0.0),
        ("tol_s", math.nan),
        ("tol_s", -math.inf),
        ("max_pulses", 0),
    ],
)
def test_write_verify_nonsensical_targets_fail(field: str, value: float) -> None:
    req = _wv(6)
    req.entries[2][field] = value
    _rejects(req, "write-verify entries need target > 0 S, tolerance > 0 S and max_pulses >= 1")


@settings(max_examples=100, deadline=None)
@given(targets=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=20))
def test_write_verify_targets_pass_iff_finite_and_positive(targets: list[float]) -> None:
    e = np.zeros(len(targets), WV_ENTRY)
    e["row"], e["col"] = np.arange(len(targets)), 0
    e["target_s"], e["tol_s"], e["max_pulses"] = targets, 1e-6, 10
    req = _wv(entries=e)
    t = np.asarray(targets, dtype=np.float32)
    if np.isfinite(t).all() and (t > 0).all():
        LIM.check(req)
    else:
        _rejects(req, "write-verify entries need target > 0 S")


def test_checked_requests_still_encode_within_the_payload_limit() -> None:
    """A request that passes the limits also fits one frame of the board's max_payload."""
    for payload in (512, 1024, 8192):
        lim = BoardLimits.from_hello(_hello(max_payload=payload))
        req = _wv(lim.max_wv_batch)
        lim.check(req)
        assert len(req.encode()) <= payload


# ------------------------------------------------------------------------------------------- wire ranges
@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        (AdvanceClockRequest(-1), "AdvanceClockRequest.microseconds = -1 does not fit its wire field"),
        (HeartbeatRequest(70_000), "HeartbeatRequest.watchdog_ms = 70000 does not fit its wire field [0, 65535]"),
        (StreamAck(1, 2**32), "StreamAck.next_event = 4294967296 does not fit"),
        (ReadRequest(0, 0, 1.5), "ReadRequest.v_read_mv must be an integer"),  # type: ignore[arg-type]
    ],
)
def test_a_field_outside_its_wire_type_is_named_before_anything_is_encoded(msg: object, fragment: str) -> None:
    _rejects(msg, fragment)


def test_range_checks_name_a_problem_before_the_wire_check_does() -> None:
    _rejects(SetRequest(70_000, 0, 1500, 100, 1200), "cell (70000, 0) is outside the 64x64 array")


# ------------------------------------------------------------------------------------------- 7.4 and 7.5
def test_semantic_failures_are_their_own_kind_and_come_after_the_range_checks() -> None:
    with pytest.raises(SemanticLimitError, match="read voltage 0.000 V must be positive"):
        LIM.check(ReadRequest(0, 0, 0))
    with pytest.raises(SemanticLimitError, match="read_every 11 exceeds n_cycles 10"):
        LIM.check(_endurance(n_cycles=10, read_every=11))
    with pytest.raises(LimitError) as exc:  # also outside the read range: a range failure, reported first
        LIM.check(_endurance(n_cycles=10, read_every=11, v_read_mv=-5))
    assert type(exc.value) is LimitError


def test_worst_case_durations_follow_the_documented_rule() -> None:
    """PROTOCOL.md 7.5 with o = 10 us (the simulated board's op_overhead_ns)."""
    o = 10_000
    assert LIM.worst_case_ns(SetRequest(0, 0, 1500, 100, 1200)) == 100 + o
    assert LIM.worst_case_ns(ReadBlockRequest(0, 0, 8, 8, 100)) == 64 * o
    assert LIM.worst_case_ns(_form(v_start_mv=2000, v_stop_mv=2500, v_step_mv=100)) == 6 * (1000 + o) + 7 * o
    assert LIM.worst_case_ns(_iv(n_points=10, width_ns=3, mode=1)) == 10 * (10 + o)  # a DC hold is >= width_min
    assert LIM.worst_case_ns(_wv(3)) == 3 * o + 60 * (100 + 2 * o)
    assert LIM.worst_case_ns(_endurance()) == 16 * (1000 * (100 + 100 + 2 * o) + 2 * 100 * o)
    assert LIM.worst_case_ns(AdvanceClockRequest(7)) == 7000


def test_the_clock_check_allows_exactly_the_end_of_the_range() -> None:
    LIM.check(AdvanceClockRequest(1), clock_ns=CLOCK_MAX_NS - 1000)
    with pytest.raises(LimitError, match="would pass its range"):
        LIM.check(AdvanceClockRequest(1), clock_ns=CLOCK_MAX_NS - 999)


def test_a_dc_hold_is_bounded_per_point_and_a_sweep_by_the_request_bound() -> None:
    LIM.check(_iv(mode=1, width_ns=10_000_000, n_points=1024))  # 1024 x 10.01 ms = 10.25 s < 60 s
    _rejects(_iv(mode=1, width_ns=10_000_001), "DC hold 10000001 ns per point exceeds the board's 10000000 ns")
    _rejects(
        _iv(mode=1, width_ns=10_000_000, n_points=1024),
        "more than the board's 5 s",
        limits=replace(LIM, max_request_ms=5000),
    )


def test_a_form_ramp_never_needs_more_pulses_than_its_answer_can_count() -> None:
    wide = replace(LIM, form_v=(-32768, 32767))
    _rejects(
        _form(v_start_mv=-32768, v_stop_mv=32767, v_step_mv=1), "FORM ramp of 65536 steps exceeds 65535", limits=wide
    )
    wide.check(_form(v_start_mv=-32767, v_stop_mv=32767, v_step_mv=1, width_ns=10))  # 65535 steps: 1.3 s at most
