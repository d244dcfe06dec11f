"""FORM's shortcut over the pulses that leave a pristine cell pristine (`FirmwareEngine._pristine_form_steps`,
`RRAMArray.pristine_steps`) gives the loop's bytes and chip state exactly, whatever ends the ramp."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from firmware_protocol import Status
from firmware_protocol import messages as m
from sim_backend.board_config import BoardConfig
from sim_backend.device_params import DeviceParams
from sim_backend.firmware import FirmwareEngine, no_pristine_steps
from tests.sim_backend.test_firmware import FakeClock, Host
from tests.sim_backend.test_long_requests import STEP_S, Line

ROWS = COLS = 8


def _engines(config: BoardConfig, silent: bool = False) -> tuple[Host, Host, list[int]]:
    """The same board twice, the second without the shortcut (its FORM runs every pulse in the loop); the list
    counts the pulses the first one's shortcut took."""
    hosts, taken = [], []
    for shortcut in (True, False):
        clock = FakeClock()
        engine = FirmwareEngine(config, wall_clock=clock)
        if silent:
            engine.poll_input = Line(clock)
        if shortcut:
            pristine = engine._pristine_form_steps

            def counted(*a, _f=pristine):
                out = _f(*a)
                taken.append(out[0])
                return out

            engine._pristine_form_steps = counted  # type: ignore[method-assign]
        else:
            engine._pristine_form_steps = lambda *a: no_pristine_steps()  # type: ignore[method-assign]
        h = Host(engine)
        h.poll()
        h.hello()
        hosts.append(h)
    return hosts[0], hosts[1], taken


def _same(fast: Host, slow: Host) -> None:
    assert b"".join(fast.wire) == b"".join(slow.wire)
    a, b = fast.engine.export_state(), slow.engine.export_state()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _ramps() -> list[m.FormRequest]:
    """Every cell formed with the default ramp, some with a ramp too short, one starting above V_form, then
    every cell again (formed cells take no shortcut)."""
    out = []
    for k in range(ROWS * COLS):
        r, c = divmod(k, COLS)
        if k % 7 == 3:
            out.append(m.FormRequest(r, c, 2000, 2300, 100, 1000, 1000, 100, 5000))  # too short to form
        elif k == 10:
            out.append(m.FormRequest(r, c, 4900, 5000, 100, 1000, 1000, 100, 5000))  # forms at its first pulse
        else:
            out.append(m.FormRequest(r, c, 2000, 4500, 100, 1000 + 10 * k, 1000, 100, 5000))
    return out + [m.FormRequest(*divmod(k, COLS), 2000, 4500, 100, 1000, 1000, 100, 5000) for k in range(0, 64, 5)]


@pytest.mark.parametrize(
    "device, refs, g_formed_ns",
    [
        (DeviceParams(), (), 5000),
        # every cell with a trap (the trap's chain from read to read), a quarter that never form
        (DeviceParams(rtn_cell_frac=1.0, form_fail_frac=0.25), (), 5000),
        # read noise so large that a pristine read can reach the threshold: the ramp ends there
        (DeviceParams(read_noise_frac=0.2), (), 2000),
        # fixture resistors in place of two cells take no shortcut
        (DeviceParams(), ((0, 1, 50e3), (2, 2, 200e3)), 5000),
    ],
)
def test_the_shortcut_gives_the_loops_bytes_and_state(device: DeviceParams, refs, g_formed_ns: int) -> None:
    config = BoardConfig(rows=ROWS, cols=COLS, seed=5, device=device, reference_cells=refs)
    fast, slow, taken = _engines(config)
    fixtures = {(r, c) for r, c, _ in refs}
    noisy_ends = 0  # ramps a pristine cell's noisy read ended after a pulse (reported formed, still pristine)
    for req in _ramps():
        req = replace(req, g_formed_ns=g_formed_ns)
        a, b = fast.exchange(req)[0], slow.exchange(req)[0]
        assert a.status == b.status
        res = m.FormResult.decode(a.payload)
        pristine = not fast.engine.array.formed[req.row * COLS + req.col] and (req.row, req.col) not in fixtures
        noisy_ends += bool(res.formed and res.pulses and pristine)
    fast.ok(m.ReadBlockRequest(0, 0, ROWS, COLS, 100))
    slow.ok(m.ReadBlockRequest(0, 0, ROWS, COLS, 100))
    _same(fast, slow)
    if device.read_noise_frac > 0.1:
        assert noisy_ends > 0  # the case this parameter set is for
    else:
        assert noisy_ends == 0 and sum(taken) > 5 * ROWS * COLS  # the shortcut took most pre-forming pulses


def test_a_silent_host_stops_the_shortcut_at_the_same_pulse() -> None:
    """The host is heard before every pulse the shortcut takes: the watchdog ends the ramp where the loop does."""
    fast, slow, taken = _engines(BoardConfig(rows=ROWS, cols=COLS, seed=3), silent=True)
    req = m.FormRequest(0, 0, 100, 5000, 1, 1000, 1000, 100, 5000)  # 4,901 steps of 1 mV: the watchdog ends it
    a, b = fast.exchange(req)[0], slow.exchange(req)[0]
    assert a.status == b.status == Status.ABORTED
    pulses = m.FormResult.decode(a.payload).pulses
    assert pulses == int(2.0 / STEP_S) - 1 and taken == [pulses]
    _same(fast, slow)


def test_apply_takes_only_the_steps_it_is_given() -> None:
    engine = FirmwareEngine(BoardConfig(rows=ROWS, cols=COLS, seed=3))
    steps = engine.array.pristine_steps(0, 0, np.array([2.0, 2.1]), 1000, 1.0, 0.1)
    assert steps is not None and steps.read_current.size == 2
    with pytest.raises(ValueError, match="0 to 2 steps"):
        engine.array.apply_pristine_steps(steps, 3)
    engine.array.form(np.array([0]), np.array([0]), 4.9, 1000, 1.0)
    assert engine.array.pristine_steps(0, 0, np.array([2.0]), 1000, 1.0, 0.1) is None  # formed: no shortcut
