"""The formed check: a procedure on cells that are not formed refuses in one line before any pulse, or with
--skip-unformed leaves them out and counts them; its summary never holds NaN nor raises a numpy warning."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firmware_protocol import CellResult
from hil.characterize import get_procedure
from hil.characterize.formed import CHECK_TABLE, G_FORMED_MIN, FormedCellsParams, NotFormedError
from hil.characterize.runfile import read_run
from hil.cli.report import summary_lines
from tests.helpers.boards import open_sim, pulses, run
from tests.helpers.cli import assert_one_line_error, rram

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

# Small, quick runs of every procedure that needs formed cells.
SMALL: dict[str, dict[str, Any]] = {
    "iv": dict(points=11, cycles=1),
    "endurance": dict(cycles=40, read_every=10),
    "retention": dict(times=2, t_first=1.0, t_last=10.0),
    "levels": dict(levels=4, read_times="1", gate_points=3, cal_cells=4),
    "read-noise": dict(reads=5, settle=1.0),
}
NEEDS_FORMED = sorted(SMALL)
CHECK_READS = FormedCellsParams().check_reads  # the default: 0.035 uS of read noise left on each cell's mean


def _reads(eng: Any) -> int:
    return int(eng.counters.reads)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a summary."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


@pytest.mark.parametrize("name", NEEDS_FORMED)
def test_a_pristine_region_is_refused_in_one_line_before_any_pulse(name: str, tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    with open_sim("inproc", seed=11) as (board, eng):
        before, reads = pulses(eng), _reads(eng)
        with pytest.raises(NotFormedError) as err:
            run(board, name, out, cells="0:4,0:4", check_reads=CHECK_READS, **SMALL[name])
        assert np.array_equal(pulses(eng), before)  # no FORM, SET or RESET pulse
        assert _reads(eng) - reads == CHECK_READS * 16  # only the check's block reads, once per cell
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{name}: ")
    assert "of 16 cells in 0:4,0:4 are not formed" in msg
    assert "run `rram characterize form --cells 0:4,0:4` first" in msg and "--skip-unformed" in msg
    assert int(msg.split(": ", 1)[1].split(" ", 1)[0]) >= 15  # a short (stuck-LRS) cell may read as conducting
    assert not out.exists() and not list(tmp_path.iterdir())  # refused before the run file


def test_the_cli_refusal_is_one_line_and_writes_nothing(capsys, monkeypatch, tmp_path: Path) -> None:
    out = tmp_path / "end.h5"
    args = ["characterize", "endurance", "--port", "sim://?seed=12&rows=16&cols=16", "-o", str(out)]
    r = rram(capsys, monkeypatch, *args, "--cells", "0:4,0:4", "--cycles", "100", "--read-every", "10")
    assert_one_line_error(r, "cells in 0:4,0:4 are not formed", "rram characterize form --cells 0:4,0:4")
    assert not out.exists()


def _half_formed(eng: Any) -> tuple[np.ndarray, np.ndarray]:
    """Form rows 0-1 of the region 0:4,0:4 directly (set-up); True per cell that reads as formed, and per cell
    whose true conductance is too close to the threshold for the check to be sure (none here, checked)."""
    a = eng.array
    rr, cc = np.meshgrid(np.arange(2), np.arange(4), indexing="ij")
    a.form(rr.ravel(), cc.ravel(), 4.0, 1000, 1.0)
    rows, cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    g = a.conductance(rows.ravel(), cols.ravel())
    return g >= G_FORMED_MIN, np.abs(np.log(g / G_FORMED_MIN)) < np.log(2)


@pytest.mark.parametrize("name", NEEDS_FORMED)
def test_skip_unformed_leaves_them_out_counts_them_and_has_no_nan(name: str, tmp_path: Path) -> None:
    with open_sim("inproc", seed=13) as (board, eng):
        formed, unsure = _half_formed(eng)
        assert not unsure.any() and 0 < formed.sum() < 16
        before = pulses(eng)
        out = run(
            board,
            name,
            tmp_path / "run.h5",
            cells="0:4,0:4",
            check_reads=CHECK_READS,
            skip_unformed=True,
            **SMALL[name],
        )
        spent = pulses(eng) - before
    s = out.summary
    assert s["cells"] == 16 and s["skipped_unformed"] == int((~formed).sum())
    assert _finite(s) and json.loads(json.dumps(s, allow_nan=False)) == s
    data = read_run(out.path).data
    check = data[CHECK_TABLE]
    assert len(check) == CHECK_READS and np.array_equal(check["g"].mean(axis=0) >= G_FORMED_MIN, formed)
    assert spent[0] == 0  # never a FORM pulse
    if name == "iv":  # swept: the formed cells only, one pulse per nonzero point
        assert s["sweeps"] == formed.sum() and s["g_on_median_s"] > 5e-6 and 0 < s["v_set_median_v"] < 1.5
        assert {tuple(c) for c in data["iv"]["cell"]} == {(k // 4, k % 4) for k in np.flatnonzero(formed)}
        assert spent[1] + spent[2] == formed.sum() * 40  # 4 branches of 11 points, 4 of them at 0 V
    elif name == "endurance":  # the board cycles the rectangle; the summary uses the formed cells
        assert s["lrs_median_first_s"] > 10 * s["hrs_median_first_s"] > 0 and s["window_first"] > 5
    else:  # write-verify: left-out cells have a record (status NOT_FORMED, no pulse), and nothing else is spent
        table = "verified" if name == "levels" else "program"
        prog = data[table]
        assert np.all(prog["status"][~formed] == CellResult.NOT_FORMED) and np.all(prog["pulses"][~formed] == 0)
        used = int(prog["pulses"].sum())
        if name == "levels":
            used += 2 * 3 * 4 + 2 * int(formed.sum())  # gate calibration on 4 formed cells, open loop
            assert np.all(data["open_loop"]["pulses"][~formed] == 0)
            assert s["healthy"] >= formed.sum() - 1 and s["verified"]["sigma_s"] < 1e-6
        assert spent[1] + spent[2] == used


@pytest.mark.parametrize("name", NEEDS_FORMED)
def test_a_region_with_nothing_formed_gives_counts_and_none(name: str, tmp_path: Path) -> None:
    """--skip-unformed on a pristine region: no pulse, a summary of counts, every statistic "none"."""
    with open_sim("inproc", seed=14) as (board, eng):
        before = pulses(eng)
        out = run(
            board,
            name,
            tmp_path / "run.h5",
            cells="2:4,0:4",
            check_reads=CHECK_READS,
            skip_unformed=True,
            **SMALL[name],
        )
        skipped = out.summary["skipped_unformed"]
        if skipped == 8:
            assert np.array_equal(pulses(eng), before)
    assert _finite(out.summary) and skipped >= 7
    text = "\n".join(summary_lines(out.summary, get_procedure(name).summary_units))
    assert "nan" not in text and "skipped unformed" in text and f"{skipped} of 8" in text


def test_a_few_dead_cells_are_left_out_without_the_flag(tmp_path: Path) -> None:
    """Cells that died forming (up to --max-unformed % of the region) do not stop a run on a formed chip."""
    with open_sim("inproc", seed=15) as (board, eng):
        a = eng.array
        a.form(*a.all_cells(), 4.0, 1000, 1.0)
        rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
        dead = a.conductance(rows.ravel(), cols.ravel()) < G_FORMED_MIN
        assert 0 < dead.sum() <= 0.1 * 256
        out = run(board, "read-noise", tmp_path / "rn.h5", cells="0:16,0:16", reads=5, program=False)
        assert out.summary["skipped_unformed"] == dead.sum() and out.summary["used"] == 256 - dead.sum()
        with pytest.raises(NotFormedError, match=r"\d+ of 256 cells"):
            run(board, "read-noise", tmp_path / "rn2.h5", cells="0:16,0:16", reads=5, program=False, max_unformed=0)
