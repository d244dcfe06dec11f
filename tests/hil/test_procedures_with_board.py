"""Every characterization procedure on the board at --board-port (default: the simulated board), on a small
region with short settings, checked only with physics that holds on a real chip too: no simulator ground truth.

    pytest tests/hil/test_procedures_with_board.py                          # simulated board
    pytest tests/hil/test_procedures_with_board.py --board-port /dev/ttyUSB0  # a real board (forms cells 0:4,0:4)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from firmware_protocol import PROTOCOL_MAJOR, CellResult
from hil.characterize.runfile import read_run
from hil.hardware.board import Board
from tests.conftest import FIRMWARES
from tests.helpers.boards import run

# On the simulated board every procedure runs against both firmwares (Python, and the C core); a real board once.
pytestmark = [pytest.mark.board, pytest.mark.parametrize("firmware", FIRMWARES, indirect=True, scope="module")]

ROWS, COLS = (0, 4), (0, 4)
REGION = f"{ROWS[0]}:{ROWS[1]},{COLS[0]}:{COLS[1]}"
G_FORMED = 5e-6  # S, read conductance that counts as formed
TOL = 0.8e-6  # S, write-verify tolerance
MOST = 0.8  # share of the formed cells a procedure must get right (a real chip has stuck and weak cells)


@pytest.fixture(scope="module")
def board(board_port: str, real_board: bool, firmware: str) -> Iterator[Board]:
    if real_board and firmware != "python":
        pytest.skip("a real board has its own firmware: run once")
    port = f"{board_port}&firmware=c" if firmware == "c" else board_port
    with Board.open(port) as b:
        yield b


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, firmware: str) -> Path:
    return tmp_path_factory.mktemp(f"board-runs-{firmware}")


@pytest.fixture(scope="module")
def formed(board: Board, runs: Path) -> np.ndarray:
    """Form the region (the first step on a fresh chip); True per formed cell, row-major."""
    out = run(board, "form", runs / "form.h5", cells=REGION, v_start=2.0, v_stop=4.5, v_step=0.1, g_formed=G_FORMED)
    d = read_run(out.path).data["form"]
    done = {(int(r), int(c)): bool(f) for (r, c), f in zip(d["cell"], d["formed"])}
    return np.array([done[(r, c)] for r in range(*ROWS) for c in range(*COLS)])


def _range(d: dict, key: str) -> tuple[float, float]:
    lo, hi = d[key]
    assert lo <= hi, f"{key}: {lo} > {hi}"
    return float(lo), float(hi)


def test_identity_and_limits_are_sane(board: Board) -> None:
    d = board.describe()
    assert d["board_id"].strip() and d["protocol"].startswith(f"{PROTOCOL_MAJOR}.")
    assert d["rows"] >= ROWS[1] and d["cols"] >= COLS[1]
    read_lo, read_hi = _range(d, "read_v")
    assert 0 <= read_lo < read_hi <= 1.0  # a read must stay far below the switching voltages
    set_hi, reset_lo, form_hi = _range(d, "set_v")[1], _range(d, "reset_v")[0], _range(d, "form_v")[1]
    assert set_hi > read_hi and reset_lo < 0 and form_hi >= set_hi
    w_min, w_max, w_step = d["pulse_width_ns"]
    assert 0 < w_min <= w_max and w_step > 0
    assert 0 < d["max_compliance_a"] <= 10e-3
    assert 8 <= d["dac_bits"] <= 24 and 8 <= d["adc_bits"] <= 24
    assert "WRITE_VERIFY" in d["capabilities"]


def test_form(board: Board, formed: np.ndarray, runs: Path) -> None:
    d = read_run(runs / "form.h5").data["form"]
    ok = d["formed"].astype(bool)
    assert ok.mean() >= 0.5, f"only {ok.sum()} of {ok.size} cells formed"
    assert np.all(d["g_after"][ok] >= G_FORMED)  # formed means conducting above the threshold
    assert np.all(d["g_after"][~ok] < G_FORMED)
    ramped = ok & (d["pulses"] > 0)
    assert np.all((d["v_form"][ramped] >= 2.0 - 1e-3) & (d["v_form"][ramped] <= 4.5 + 1e-3))


def test_iv(board: Board, formed: np.ndarray, runs: Path) -> None:
    r, c = divmod(int(np.flatnonzero(formed)[0]), COLS[1] - COLS[0])
    n = 11
    out = run(board, "iv", runs / "iv.h5", cells=f"{ROWS[0] + r},{COLS[0] + c}", points=n, cycles=2)
    d = read_run(out.path).data["iv"]
    assert len(d) == 2
    v, i = d["v"].astype(float), d["i"]
    clear = np.abs(v) > 0.3  # away from 0 V, where the current's sign is lost in the noise
    assert np.mean(np.sign(i[clear]) == np.sign(v[clear])) > 0.9  # current flows with the applied voltage
    assert i[:, :n].max() <= 1.1 * board.describe()["max_compliance_a"]  # the SET branch stays under the limit
    assert i[:, 2 * n : 3 * n].min() < 0  # the RESET branch drives current the other way
    assert out.summary["g_on_median_s"] > G_FORMED / 2


def test_endurance(board: Board, formed: np.ndarray, runs: Path) -> None:
    out = run(board, "endurance", runs / "end.h5", cells=REGION, cycles=100, read_every=20)
    d = read_run(out.path).data["endurance"]
    assert np.array_equal(d["cycle"], np.arange(20, 101, 20))
    lrs, hrs = d["lrs"][:, formed], d["hrs"][:, formed]
    assert np.mean(lrs > hrs) >= MOST  # SET leaves a cell more conducting than RESET does
    assert out.summary["window_first"] > 1 and out.summary["window_last"] > 1
    assert np.median(lrs) > G_FORMED


def _within_tolerance(program: np.ndarray, formed: np.ndarray) -> float:
    ok = (program["status"] == CellResult.CONVERGED) & (np.abs(program["g"] - program["target"]) <= TOL)
    return float(ok[formed].mean())


def test_retention(board: Board, formed: np.ndarray, runs: Path) -> None:
    out = run(board, "retention", runs / "ret.h5", cells=REGION, levels=4, tol=TOL, times=3, t_first=1.0, t_last=10.0)
    data = read_run(out.path).data
    prog, reads = data["program"], data["reads"]
    assert _within_tolerance(prog, formed) >= MOST
    assert len(reads) == 3 and np.all(np.diff(reads["t"]) > 0) and reads["t"][0] > prog["t"].max()
    # a higher target level still reads higher after the wait (levels do not swap places)
    first = reads["g"][0]
    means = [
        np.median(first[formed & (prog["level"] == lv)]) for lv in range(4) if np.any(formed & (prog["level"] == lv))
    ]
    assert np.all(np.diff(means) > 0), means


def test_levels(board: Board, formed: np.ndarray, runs: Path) -> None:
    out = run(
        board,
        "levels",
        runs / "lv.h5",
        cells=REGION,
        levels=4,
        tol=TOL,
        read_times="1,10",
        gate_points=5,
        cal_cells=4,
        gate_lo=0.8,
        gate_hi=1.4,
    )
    data = read_run(out.path).data
    assert _within_tolerance(data["verified"], formed) >= MOST
    cal = data["gate_cal"]
    g = np.median(cal["g"][:, formed[: cal["g"].shape[1]]], axis=1)
    assert g[-1] > g[0]  # a higher SET gate (compliance) leaves a more conducting cell
    assert out.summary["verified"]["within_tol"] >= out.summary["open_loop"]["within_tol"]  # verify beats one shot


def test_read_noise(board: Board, formed: np.ndarray, runs: Path) -> None:
    out = run(board, "read-noise", runs / "rn.h5", cells=REGION, reads=20, levels=2, tol=TOL, settle=1.0)
    g = read_run(out.path).data["reads"]["g"]
    assert g.shape == (20, formed.size)
    mean, sd = g[:, formed].mean(axis=0), g[:, formed].std(axis=0, ddof=1)
    assert np.all(sd > 0)  # a real read chain always has some noise; zero means a stuck or cached reading
    assert np.median(sd / mean) < 0.1  # read noise is small against the programmed level
    assert np.median(sd) < TOL  # and below the write-verify tolerance, or verifying could not converge
    assert out.summary["sigma_median_s"] < 0.1 * out.summary["g_mean_median_s"]
