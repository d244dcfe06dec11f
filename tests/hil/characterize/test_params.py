"""Declared procedure parameters: every field carries help/unit/range metadata, the CLI turns it into options
that refuse out-of-range values in one line before a board is opened, and the range clipped to the
connected board's limits is checked before any pulse."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import hil.deploy.procedure  # noqa: F401  (registers the deployment run "program")
from firmware_protocol import LimitError
from firmware_protocol.limits import BoardLimits
from firmware_protocol.progress import Progress
from hil.characterize import PROCEDURES, get_procedure
from hil.characterize.iv import Iv, IvParams
from hil.characterize.procedure import (
    VOLTAGE_LIMITS,
    ParamSpec,
    Procedure,
    ProcedureParams,
    param,
    param_specs,
)
from hil.characterize.runfile import RunWriter, Table
from hil.cli import cli
from hil.hardware.board import Board
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from tests.helpers.boards import PtySim
from tests.helpers.cli import assert_one_line_error, rram

SIM = "sim://?seed=1&rows=16&cols=16"
ALL = sorted(PROCEDURES.items())
FIELDS = [(name, f) for name, cls in ALL for f in dataclasses.fields(cls.Params)]
FIELD_IDS = [f"{name}.{f.name}" for name, f in FIELDS]


def _counts(engine: FirmwareEngine) -> tuple[int, int, int, int]:
    c = engine.counters
    return c.form, c.set, c.reset, c.reads


@pytest.fixture
def pty_sim() -> Iterator[PtySim]:
    sim = PtySim(FirmwareEngine(BoardConfig(rows=16, cols=16, seed=1)))
    yield sim
    sim.close()


# ------------------------------------------------------------------------------------------- the metadata
def test_registry_holds_every_procedure_under_its_own_name() -> None:
    assert {"form", "iv", "endurance", "retention", "levels", "read-noise", "program"} <= set(PROCEDURES.names())
    for name, cls in ALL:
        assert cls.name == name and get_procedure(name) is cls
    with pytest.raises(ValueError, match=r"^unknown procedure 'nope' \(known: endurance, form, iv, "):
        get_procedure("nope")


@pytest.mark.parametrize("proc, f", FIELDS, ids=FIELD_IDS)
def test_every_parameter_has_help_unit_and_a_range_holding_its_default(proc: str, f: dataclasses.Field) -> None:
    spec = f.metadata["spec"]
    assert isinstance(spec, ParamSpec)
    assert len(spec.help) > 8 and spec.help != f.name.replace("_", " "), "a real help text, not the field name"
    assert spec.unit in ("", "V", "ns", "s", "S", "cycles", "%")
    if f.type in ("float", float):
        assert spec.unit in ("V", "S", "s"), "every float parameter is a physical quantity with a unit"
        assert spec.bounded, "every float parameter has a declared range"
    if f.name.endswith("_ns"):
        assert spec.unit == "ns" and spec.limit == "width"
    if spec.limit is not None:
        assert spec.unit == ("ns" if spec.limit == "width" else "V")
    if spec.bounded:
        assert spec.contains(f.default), f"default {f.default!r} outside {spec.range_text(f.name)}"


def test_param_spec_ranges_in_words_and_numbers() -> None:
    tol = ParamSpec("write-verify tolerance", "S", min=0, min_open=True)
    assert tol.range_text("--tol") == "--tol > 0 S" and tol.help_text() == "write-verify tolerance [S] (> 0)"
    assert (
        not tol.contains(0.0)
        and tol.contains(1e-9)
        and not tol.contains(float("nan"))
        and not tol.contains(float("inf"))
    )
    pulses = ParamSpec("pulse budget", min=1, max=65535)
    assert (
        pulses.range_text("--max-pulses") == "1 <= --max-pulses <= 65535"
        and pulses.help_text() == "pulse budget (1 to 65535)"
    )
    assert pulses.contains(1) and pulses.contains(65535) and not pulses.contains(0) and not pulses.contains(65536)
    neg = ParamSpec("RESET voltage", "V", max=0, max_open=True)
    assert neg.range_text("--v") == "--v < 0 V" and neg.contains(-0.001) and not neg.contains(0.0)
    assert ParamSpec("a flag").help_text() == "a flag" and ParamSpec("a flag").contains(float("nan"))
    with pytest.raises(ValueError, match="unknown board limit 'set'"):
        ParamSpec("x", limit="set")
    with pytest.raises(ValueError, match="needs a help text"):
        ParamSpec(" ")


def test_board_range_is_the_declared_range_clipped_to_the_boards_limit() -> None:
    limits = BoardLimits(
        16,
        16,
        set_v=(0, 3000),
        reset_v=(-3000, 0),
        form_v=(0, 5000),
        read_v=(0, 300),
        gate_v=(0, 3300),
        width_min_ns=10,
        width_max_ns=1_000_000,
        width_step_ns=10,
        max_payload=1024,
        max_wv_batch=64,
    )
    assert ParamSpec("v", "V", min=0.05, max=0.2, limit="read_v").on_board(limits) == (50, 200)
    assert ParamSpec("v", "V", min=0, min_open=True, limit="read_v").on_board(limits) == (0, 300)
    assert ParamSpec("v", "V", min=-5, max=5, limit="gate_v").on_board(limits) == (0, 3300)
    assert ParamSpec("w", "ns", min=100, limit="width").on_board(limits) == (100, 1_000_000)
    assert set(VOLTAGE_LIMITS) <= {f.name for f in dataclasses.fields(BoardLimits)}


def test_a_parameter_without_metadata_is_refused_when_the_procedure_is_declared() -> None:
    @dataclass
    class BareParams(ProcedureParams):
        level: int = 3

    with pytest.raises(TypeError, match="'level' is declared without param"):

        class Bare(Procedure[BareParams]):
            name = "bare"
            Params = BareParams


# ------------------------------------------------------------------------------------------- a new procedure gets the checks
@dataclass
class ProbeParams(ProcedureParams):
    v_probe: float = param(
        0.5, unit="V", help="probe SET voltage", min=0.2, max=1.0, limit="set_v", label="probe voltage"
    )


class Probe(Procedure[ProbeParams]):
    """A procedure declared only here (not registered): its parameter checks come from the metadata alone."""

    name = "probe"
    Params = ProbeParams

    def tables(self) -> dict[str, Table]:
        return {}

    def run(self, w: RunWriter, bar: Progress) -> None:
        raise AssertionError("not run in these tests")

    def summary(self, data: dict) -> dict:
        return {}


def test_new_procedure_checks_declared_range_and_the_clipped_board_range() -> None:
    narrow = PtySim(FirmwareEngine(BoardConfig(rows=8, cols=8, seed=1, set_v_mv=(0, 400))))
    try:
        with Board.open(narrow.path) as board:
            Probe(ProbeParams(cells="0,0", v_probe=0.3), board)
            with pytest.raises(ValueError, match=r"^probe needs 0.2 <= --v-probe <= 1 V \(got 1.5\)$"):
                Probe(ProbeParams(cells="0,0", v_probe=1.5), board)
            # inside the declared range, outside this board's SET range: refused against the intersection
            with pytest.raises(
                LimitError, match=r"probe voltage 0.500 V is outside the board's range \[0.200, 0.400\] V"
            ):
                Probe(ProbeParams(cells="0,0", v_probe=0.5), board)
        assert _counts(narrow.engine) == (0, 0, 0, 0)
    finally:
        narrow.close()


def test_dc_sweep_dwell_is_not_held_to_the_pulse_width_grid() -> None:
    with Board.open(SIM) as board:
        Iv(IvParams(cells="0,0", dc=True, width_ns=5), board)
        with pytest.raises(LimitError, match="pulse width 5 ns is outside"):
            Iv(IvParams(cells="0,0", dc=False, width_ns=5), board)


def test_declared_ranges_are_checked_for_procedures_built_in_code_too() -> None:
    cls = get_procedure("read-noise")
    with Board.open(SIM) as board, pytest.raises(ValueError, match=r"^read-noise needs --reads >= 3 \(got 2\)$"):
        cls(cls.Params(reads=2), board)


# ------------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    "command, fragments",
    [
        (
            "form",
            [
                "--v-stop",
                "last forming pulse voltage",
                "[V] (> 0)",
                "--width-ns",
                "forming pulse width [ns] (>= 1)",
                "--v-read",
                "read voltage [V] (> 0)",
                "--cells",
                "cell region",
            ],
        ),
        ("endurance", ["SET pulse voltage [V] (> 0)", "RESET pulse voltage [V] (< 0)", "--cycles", "[cycles] (>= 1)"]),
        ("iv", ["points per branch (4 branches per sweep) (2 to 1024)", "--dc / --no-dc"]),
        (
            "levels",
            ["write-verify pulse budget per cell (1 to 65535)", "write-verify tolerance (2% of g_max) [S] (> 0)"],
        ),
    ],
)
def test_characterize_help_shows_unit_and_range(command: str, fragments: list[str]) -> None:
    r = CliRunner().invoke(cli, ["characterize", command, "--help"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # click wraps long help lines
    for frag in fragments:
        assert frag in text, frag
    assert "set v" not in text


def test_program_help_takes_its_write_verify_options_from_the_deployment_params() -> None:
    r = CliRunner().invoke(cli, ["program", "--help"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "write-verify tolerance [S] (> 0)" in text and "[s] (>= 0)" in text


def test_deployment_is_not_a_characterization_command() -> None:
    from hil.cli.characterize import characterize

    assert set(characterize.commands) == {name for name, cls in ALL if cls.characterization}
    assert "program" in PROCEDURES and "program" not in characterize.commands


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["form", "--v-step", "0"], ["form needs --v-step > 0 V (got 0)"]),
        (["form", "--width-ns", "0"], ["form needs --width-ns >= 1 ns (got 0)"]),
        (["form", "--v-stop", "abc"], ["Invalid value for '--v-stop': 'abc' is not a number"]),
        (["iv", "--points", "1025"], ["iv needs 2 <= --points <= 1024 (got 1025)"]),
        (["iv", "--v-min", "0.5"], ["iv needs --v-min < 0 V (got 0.5)"]),
        (["iv", "--cycles", "1.5"], ["Invalid value for '--cycles': '1.5' is not an integer"]),
        (["endurance", "--cycles", "0"], ["endurance needs --cycles >= 1 cycles (got 0)"]),
        (["endurance", "--reset-gate", "-0.1"], ["endurance needs --reset-gate >= 0 V (got -0.1)"]),
        (["levels", "--max-pulses", "70000"], ["levels needs 1 <= --max-pulses <= 65535 (got 70000)"]),
        (["retention", "--seed", "-1"], ["retention needs --seed >= 0 (got -1)"]),
        (["read-noise", "--tol", "nan"], ["read-noise needs --tol > 0 S (got nan)"]),
        (["read-noise", "--v-read", "-0.1"], ["read-noise needs --v-read > 0 V (got -0.1)"]),
    ],
)
def test_value_outside_the_declared_range_is_one_line_with_no_board_opened(
    capsys, monkeypatch, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    opened: list[object] = []

    def no_board(*a: object, **kw: object) -> None:
        opened.append(a)
        raise AssertionError("the board was opened")

    monkeypatch.setattr(Board, "open", no_board)
    out = tmp_path / "run.h5"
    r = rram(capsys, monkeypatch, "characterize", args[0], "--port", SIM, "-o", str(out), "-q", *args[1:])
    assert_one_line_error(r, *fragments)
    assert not opened and not list(tmp_path.iterdir())


def test_program_refuses_a_bad_tolerance_before_planning(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(Board, "open", lambda *a, **kw: pytest.fail("the board was opened"))
    r = rram(capsys, monkeypatch, "program", str(tmp_path / "model.pt"), "--tol", "0", "-o", str(tmp_path / "d.h5"))
    assert_one_line_error(r, "program needs --tol > 0 S (got 0)")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["endurance", "--set-gate", "3.4"], ["gate voltage 3.400 V is outside the board's range [0.000, 3.300] V"]),
        (["iv", "--v-min", "-3.2"], ["sweep minimum -3.200 V is outside the board's range [-3.000, 0.000] V"]),
        (["form", "--v-start", "5.5", "--v-stop", "6"], ["FORM start voltage 5.500 V is outside the board's range"]),
        (["endurance", "--reset-width-ns", "5"], ["pulse width 5 ns is outside [10, 1000000] ns"]),
        (["read-noise", "--v-read", "0.35"], ["read voltage 0.350 V is outside the board's range [0.000, 0.300] V"]),
        (["levels", "--gate-lo", "3.4"], ["gate voltage 3.400 V"]),
    ],
)
def test_value_inside_the_declared_range_but_outside_the_board_is_refused_before_any_pulse(
    capsys, monkeypatch, tmp_path: Path, pty_sim: PtySim, args: list[str], fragments: list[str]
) -> None:
    out = tmp_path / "run.h5"
    before = _counts(pty_sim.engine)
    r = rram(
        capsys,
        monkeypatch,
        "characterize",
        args[0],
        "--port",
        pty_sim.path,
        "-o",
        str(out),
        "-q",
        "--cells",
        "0:2,0:2",
        *args[1:],
    )
    assert_one_line_error(r, *fragments)
    assert not list(tmp_path.iterdir())
    assert _counts(pty_sim.engine) == before


def test_every_parameter_becomes_an_option_of_its_command() -> None:
    runner = CliRunner()
    for name, cls in ALL:
        if not cls.characterization:
            continue
        text = " ".join(runner.invoke(cli, ["characterize", name, "--help"]).output.split())
        bare = "".join(text.split())  # click may wrap a help text anywhere, even after a hyphen
        for field, spec in param_specs(cls.Params).items():
            assert "--" + field.replace("_", "-") in text and "".join(spec.help_text().split()) in bare, (name, field)
