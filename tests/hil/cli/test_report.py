"""Text people read: summaries as aligned `name  value unit` lines in the field's units, never a repr or NaN;
`--json` keeps full-precision SI values."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from firmware_protocol.fileformat import json_text
from hil.characterize import get_procedure
from hil.cli.report import aligned, label, number, quantity, quantity_text, summary_lines
from tests.helpers.boards import form_region, open_sim, run
from tests.helpers.cli import rram

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@pytest.mark.parametrize(
    "value, unit, text",
    [
        (2.015624942994232e-05, "S", "20.2 µS"),
        (7.2e-09, "S", "0.0072 µS"),
        (3.049999952316284, "V", "3.05 V"),
        (100000.0, "s", "100000 s"),
        (0.0012, "s", "1.2 ms"),
        (2e-7, "s", "200 ns"),
        (5e-4, "A", "500 µA"),
        (0.35, "%", "35.0 %"),
        (14.8, "x", "14.8 x"),
        (10_000, "cycles", "10000 cycles"),
        (None, "S", "none"),
        (float("nan"), "S", "none"),
        (True, "", "yes"),
        ([[0, 3], [1, 5]], "cells", "(0,3) (1,5)"),
        ([1.0, 3.162, 10.0], "s", "1, 3.16, 10 s"),
        ([1e-3, 2e-3], "s", "1, 2 ms"),
    ],
)
def test_values_are_shown_in_the_units_of_the_field(value: object, unit: str, text: str) -> None:
    assert quantity_text(value, unit) == text


def test_numbers_keep_three_digits_without_exponents_in_the_usual_range() -> None:
    assert [number(x) for x in (19.296, 0.72, 1.00016, -0.5, 0.0)] == ["19.3", "0.72", "1", "-0.5", "0"]
    assert number(1.5e7) == "1.50e+07" and number(3e-6) == "3.00e-06"


def test_many_cells_are_cut_short() -> None:
    text, _ = quantity([[r, 0] for r in range(20)], "cells")
    assert text.endswith("and 12 more") and text.count("(") == 8


_ROW = re.compile(r"^(\s*\S(?:.*?\S)?)(\s{2,})(\S.*)$")  # name, padding, value (and unit)
_NUMBER = re.compile(r"^(-?\d[\d.]*(?: of \d+)?|none)(?: \S+)?$")


def assert_aligned(lines: list[str]) -> None:
    """Every value starts after one shared name column; numbers (and "none") end in one column."""
    rows = [m for m in map(_ROW.match, lines) if m is not None]
    assert len(rows) >= 3, lines
    starts = {len(m.group(1)) + len(m.group(2)) for m in rows if not _NUMBER.match(m.group(3))}
    ends = {
        len(m.group(1)) + len(m.group(2)) + len(_NUMBER.match(m.group(3)).group(1))
        for m in rows
        if _NUMBER.match(m.group(3))
    }  # type: ignore[union-attr]
    name_col = max(len(m.group(1)) for m in rows) + 2
    assert all(s == name_col for s in starts), lines
    assert len(ends) <= 1, lines


def test_nested_groups_are_indented_and_aligned() -> None:
    s = {
        "cells": 16,
        "healthy": 0,
        "open_loop": {"sigma_s": None, "within_tol": 0.5},
        "verified": {"sigma_s": 4.75e-7, "within_tol": 1.0},
        "board_resets": 0,
    }
    lines = summary_lines(s, {"healthy": "of cells", "sigma_s": "S", "within_tol": "%"})
    assert lines == [
        "  cells              16",
        "  healthy       0 of 16",
        "  open loop",
        "    sigma          none",
        "    within tol     50.0 %",
        "  verified",
        "    sigma         0.475 µS",
        "    within tol    100.0 %",
        "  board resets        0",
    ]
    assert_aligned(lines)


def test_text_values_are_left_aligned_and_units_follow_numbers() -> None:
    lines = aligned([(0, "board id", "SIM-RRAM", ""), (0, "watchdog", "2000", "ms")], indent=0, right=False)
    assert lines == ["board id  SIM-RRAM", "watchdog  2000 ms"]


RUNS = {
    "form": dict(cells="4:6,0:4"),
    "iv": dict(cells="0:1,0:2", points=11, cycles=1),
    "endurance": dict(cells="0:2,0:4", cycles=40, read_every=10),
    "retention": dict(cells="0:2,0:4", times=3, t_last=100.0),
    "levels": dict(cells="0:2,0:4", levels=4, read_times="1,10", gate_points=4, cal_cells=4),
    "read-noise": dict(cells="0:2,0:4", reads=5, settle=1.0),
}
UNIT_OF = {"S": "µS", "V": " V", "%": " %", "x": " x", "cycles": " cycles"}


@pytest.fixture(scope="module")
def summaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """A real summary of every procedure, on a simulated chip whose region is formed first."""
    d = tmp_path_factory.mktemp("summaries")
    with open_sim("inproc", seed=21) as (board, eng):
        form_region(eng, "0:2,0:4")
        skip = {name: dict(skip_unformed=True) if name != "form" else {} for name in RUNS}  # a short may sit there
        return {name: run(board, name, d / f"{name}.h5", **skip[name], **kw).summary for name, kw in RUNS.items()}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_real_summaries_print_as_aligned_lines_with_units(summaries: dict[str, dict], name: str) -> None:
    units = get_procedure(name).summary_units
    s = summaries[name]
    lines = summary_lines(s, units)
    text = "\n".join(lines)
    assert "nan" not in text.lower() and "{" not in text and "[" not in text and "'" not in text
    assert not re.search(r"\d\.\d+e-\d", text), text  # no raw SI floats such as 2.0156e-05
    by_name = {m.group(1).strip(): m.group(3) for m in map(_ROW.match, lines) if m is not None}
    for key, unit in units.items():
        if key in s and unit in UNIT_OF and s[key] is not None:
            assert by_name[label(key, unit)].endswith(UNIT_OF[unit]), (key, by_name)
    assert_aligned(lines)


def test_json_summary_is_strict_json_with_si_values(capsys, monkeypatch, tmp_path: Path) -> None:
    port = "sim://?seed=22&rows=16&cols=16"
    formed = rram(
        capsys,
        monkeypatch,
        "characterize",
        "form",
        "--port",
        port,
        "--cells",
        "0:2,0:4",
        "-o",
        str(tmp_path / "f.h5"),
        "-q",
        "--json",
    )
    assert formed.code == 0, formed.text
    f = json.loads(formed.out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert 2.0 < f["v_form_median_v"] < 4.5 and 5e-6 < f["g_after_median_s"] < 60e-6  # volts, siemens
    r = rram(
        capsys,
        monkeypatch,
        "characterize",
        "levels",
        "--port",
        port,
        "--cells",
        "0:2,0:4",
        "-o",
        str(tmp_path / "l.h5"),
        "-q",
        "--json",
        "--levels",
        "4",
        "--read-times",
        "1",
        "--gate-points",
        "4",
        "--cal-cells",
        "4",
        "--skip-unformed",
    )
    assert r.code == 0, r.text
    s = json.loads(r.out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert s["procedure"] == "levels" and s["cells"] == 8
    v = s["verified"]
    assert 0 < v["sigma_s"] < 5e-6 and 0 <= v["within_tol"] <= 1 and v["pulses_mean"] > 1  # S, fraction, count
    assert all(isinstance(x, (int, float, type(None))) for x in v.values())
    text = rram(
        capsys,
        monkeypatch,
        "characterize",
        "levels",
        "--port",
        port,
        "--cells",
        "0:2,0:4",
        "-o",
        str(tmp_path / "l2.h5"),
        "-q",
        "--levels",
        "4",
        "--read-times",
        "1",
        "--gate-points",
        "4",
        "--cal-cells",
        "4",
        "--skip-unformed",
    )
    assert text.code == 0 and text.out.startswith(f"levels: wrote {tmp_path / 'l2.h5'}\n")
    assert "µS" in text.out and "sigma_s" not in text.out and "{" not in text.out
    assert not any(math.isnan(x) for x in np.ravel([v["sigma_s"], v["mean_error_s"]]))


def test_board_info_is_aligned_with_units(capsys, monkeypatch) -> None:
    r = rram(capsys, monkeypatch, "board", "info", "--port", "sim://?seed=1&rows=16&cols=16")
    assert r.code == 0, r.text
    lines = r.out.splitlines()
    col = {len(m.group(1)) + len(m.group(2)) for m in map(_ROW.match, lines) if m is not None}
    assert len(col) == 1 and len(lines) > 15  # every value in one column
    assert any(ln.startswith("SET voltage") and ln.endswith(" V") for ln in lines)
    assert any(ln.startswith("max compliance") and ln.endswith("µA") for ln in lines)


@pytest.mark.parametrize("family, params", [("lognormal", dict(s=0.1)), ("state_dependent", dict(sigma=0.05))])
def test_profile_text_is_aligned_lines_in_microsiemens(family: str, params: dict) -> None:
    from calibration.profile import NoiseProfile
    from calibration.summary import format_summary

    text = format_summary(NoiseProfile.from_paper(family, n_levels=8, **params))
    assert "µS" in text and " uS" not in text and "(uS)" not in text
    assert not re.search(r"\bnan\b", text.lower()) and "{" not in text and "array(" not in text
    mapping = text.splitlines()[2:6]
    assert [ln.split()[0] for ln in mapping] == ["g_min", "g_max", "levels", "bits"]
    assert mapping[0].endswith(" µS") and mapping[0].index("µS") == mapping[1].index("µS")  # numbers aligned


@pytest.mark.parametrize("name", sorted(set(RUNS) - {"iv"}))  # the demo runs no I-V sweep
def test_demo_headlines_show_units_not_raw_floats(summaries: dict[str, dict], name: str) -> None:
    from hil.pipeline.demo import _headline

    line = _headline(name, summaries[name], quantity_text)
    assert line and not re.search(r"\bnan\b|\d\.\d{5,}|e-0\d", line), line
    if name in ("retention", "levels", "read-noise"):
        assert "µS" in line
    if name == "form":
        assert line.endswith(" V")


def test_json_text_is_strict_json_with_nan_and_inf_as_null() -> None:
    value = {
        "nan": float("nan"),
        "inf": [1.5, float("inf"), -float("inf")],
        "numpy": np.array([0.25, np.nan]),
        "scalar": np.float32(2.0),
        "pair": (np.int64(3), None),
        "path": Path("/tmp/x.h5"),
        "flag": np.bool_(True),
        7: "key as text",
    }
    text = json_text(value)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "nan": None,
        "inf": [1.5, None, None],
        "numpy": [0.25, None],
        "scalar": 2.0,
        "pair": [3, None],
        "path": "/tmp/x.h5",
        "flag": True,
        "7": "key as text",
    }
    assert json_text({"a": [1]}, indent=2) == '{\n  "a": [\n    1\n  ]\n}'


def test_every_json_output_of_the_cli_goes_through_json_text() -> None:
    """json.dumps writes NaN (not JSON) unless told otherwise; the CLI's --json outputs use the one strict writer."""
    cli = Path(__file__).resolve().parents[3] / "hil" / "cli"
    offenders = [
        f"{p.name}:{i}"
        for p in sorted(cli.glob("*.py"))
        if p.name != "report.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "json.dump" in line
    ]
    assert offenders == []
