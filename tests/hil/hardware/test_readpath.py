"""Read-path calibration: the fit, the simulated reference-resistor fixture, the calibration file, `rram board`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol import PROTOCOL_MAJOR, VersionError
from hil.cli import cli
from hil.hardware.board import Board
from hil.hardware.instruments import ComplianceError, packaged_sim_files
from hil.hardware.instruments.simulated import SimulatedResistorSmu
from hil.hardware.readpath import (
    CalibrationFileError,
    ReadPathCalibration,
    calibrate,
    fit_gain_offset,
)
from sim_backend.board_config import BoardConfig
from sim_backend.sim_url import parse_sim_url

SMU = {  # the simulated SMUs packaged with hil.hardware.instruments, by their short backend name
    "2400": ("GPIB0::24::INSTR", "2400@sim"),
    "2450": ("USB0::0x05E6::0x2450::04096331::INSTR", "2450@sim"),
}
CELLS = [(0, 63), (1, 63), (2, 63), (3, 63), (4, 63)]
OHMS = [5e4, 1e5, 2e5, 5e5, 1e6]
VOLTS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
# seed 7: true TIA gain 1.6 % high and offset ~ -5.6 nA, far from the nominal calibration
URL = "sim://?seed=7&ref=0:63:50k,1:63:100k,2:63:200k,3:63:500k,4:63:1M"


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _true_correction(board: Board) -> tuple[float, float]:
    """Gain and offset that map the board's nominal current to the true one (from the simulator)."""
    rd = board.link.engine.chain.read  # type: ignore[attr-defined]
    return rd.true_amps_per_code / rd.amps_per_code, (rd.offset_code - rd.true_offset_code) * rd.true_amps_per_code


@pytest.fixture
def sim_smu(request: pytest.FixtureRequest) -> Iterator[SimulatedResistorSmu]:
    dialect = getattr(request, "param", "2400")
    s = SimulatedResistorSmu.open(*SMU[dialect], max_voltage_v=0.5, seed=3)
    yield s
    s.close()


# ------------------------------------------------------------------------------ the fit
def test_fit_recovers_gain_and_offset_with_honest_errors() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(5e-8, 6e-6, 400)
    errs = []
    for _ in range(50):
        y = 1.013 * x - 4e-9 + 2e-11 * rng.standard_normal(x.size)
        f = fit_gain_offset(x, y)
        errs.append([(f.gain - 1.013) / f.gain_se, (f.offset + 4e-9) / f.offset_se])
        assert f.residual_rms == pytest.approx(2e-11, rel=0.2)
    z = np.array(errs)
    assert np.all(np.abs(z) < 4.5)
    assert 0.6 < z.std(axis=0).min() and z.std(axis=0).max() < 1.5  # standard errors match the scatter
    assert f.cov < 0  # positive currents: gain and offset errors anti-correlate


@settings(max_examples=40, deadline=None)
@given(
    gain=st.floats(0.8, 1.2),
    offset=st.floats(-2e-8, 2e-8),
    x=st.lists(st.floats(1e-8, 8e-6), min_size=3, max_size=30, unique=True).filter(lambda v: np.ptp(v) > 1e-8),
)
def test_fit_exact_line_property(gain: float, offset: float, x: list[float]) -> None:
    xs = np.array(x)
    f = fit_gain_offset(xs, gain * xs + offset)
    assert f.gain == pytest.approx(gain, rel=1e-7)
    assert f.offset == pytest.approx(offset, abs=1e-14)
    assert f.residual_rms < 1e-15
    assert f.n == len(x)


def test_fit_refuses_degenerate_input() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        fit_gain_offset(np.array([1e-6, 2e-6]), np.array([1e-6, 2e-6]))
    with pytest.raises(ValueError, match="equal"):
        fit_gain_offset(np.full(5, 1e-6), np.arange(5.0))
    with pytest.raises(ValueError, match="length"):
        fit_gain_offset(np.arange(4.0), np.arange(5.0))


# ------------------------------------------------------------------------------ simulated fixture
def test_reference_cells_read_v_over_r_through_true_chain() -> None:
    with Board.open(URL) as b:
        rd = b.link.engine.chain.read  # type: ignore[attr-defined]
        for (r, c), ohms in zip(CELLS, OHMS):
            for v in (0.05, 0.3):
                got = b.read(r, c, v)
                assert got.code == int(np.rint(rd.true_offset_code + v / ohms / rd.true_amps_per_code))
                assert not got.saturated
        # an ordinary cell still follows the RRAM model (an unformed cell conducts far less than 50 kOhm)
        assert b.read(10, 10, 0.2).current_a < 0.2 / 5e4 / 10


def test_reference_cells_config_and_url_validation() -> None:
    cfg, _ = parse_sim_url("sim://?rows=8&cols=8&ref=0:7:50k,7:0:1.5M,3:3:2e5")
    assert cfg.reference_cells == ((0, 7, 5e4), (7, 0, 1.5e6), (3, 3, 2e5))
    for bad, msg in [
        ("sim://?ref=0:7", "ROW:COL:OHMS"),
        ("sim://?ref=0:7:5q", "ROW:COL:OHMS"),
        ("sim://?rows=8&ref=9:0:5k", "outside"),
        ("sim://?ref=0:1:0", "positive"),
        ("sim://?ref=0:1:5k,0:1:6k", "twice"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_sim_url(bad)
    with pytest.raises(ValueError, match="positive"):
        BoardConfig(reference_cells=((0, 0, float("nan")),))


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("sim_smu", ["2400", "2450"], indirect=True)
def test_calibration_recovers_the_boards_true_read_chain(sim_smu: SimulatedResistorSmu) -> None:
    with Board.open(URL) as b:
        gain, offset = _true_correction(b)
        assert abs(gain - 1) > 0.01 and abs(offset) > 3e-9  # a board worth calibrating
        cal = calibrate(b, sim_smu, CELLS, OHMS, VOLTS, connect=lambda c: sim_smu.connect(c.ohms))
        assert abs(cal.gain - gain) < max(4 * cal.gain_se, 1e-5) and abs(cal.gain / gain - 1) < 2e-3
        assert abs(cal.offset_a - offset) < max(4 * cal.offset_se_a, 2e-11)
        assert cal.gain_se < 1e-4 and cal.offset_se_a < 1e-10
        assert cal.residual_rms_a < 0.2e-9  # quantisation (0.125 nA/code) and SMU noise only
        assert len(cal.points["i_board_a"]) == len(CELLS) * len(VOLTS)
        assert cal.board["board_id"] == "SIM-RRAM" and cal.board["session_id"] == b.session_id
        assert "MODEL 24" in cal.smu_idn
        # the correction makes the board read the resistors right
        raw = b.read(0, 63, 0.2).current_a
        b.calibration = cal
        fixed = b.read(0, 63, 0.2).current_a
        assert abs(raw / 4e-6 - 1) > 0.01 and abs(fixed / 4e-6 - 1) < 5e-4
        assert b.read_block(0, 63, 5, 1, 0.2).current_a.ravel() == pytest.approx(0.2 / np.array(OHMS), rel=2e-3)


def test_calibrate_restores_the_boards_calibration(sim_smu: SimulatedResistorSmu) -> None:
    with Board.open(URL) as b:
        before = ReadPathCalibration(1.5, 0.0, 0, 0, 0, 0, [], [], "", "", {})
        b.calibration = before
        cal = calibrate(b, sim_smu, CELLS[:2], OHMS[:2], VOLTS, connect=lambda c: sim_smu.connect(c.ohms))
        assert b.calibration is before
        assert abs(cal.gain - _true_correction(b)[0]) < 1e-3  # fitted on nominal, not on the 1.5x-corrected currents


def test_calibrate_input_and_fixture_errors(sim_smu: SimulatedResistorSmu) -> None:
    conn = lambda c: sim_smu.connect(c.ohms)
    with Board.open(URL) as b:
        with pytest.raises(ValueError, match="one per cell"):
            calibrate(b, sim_smu, CELLS, OHMS[:3], VOLTS, connect=conn)
        with pytest.raises(ValueError, match="read range"):
            calibrate(b, sim_smu, CELLS, OHMS, [0.1, 0.5], connect=conn)
        with pytest.raises(ValueError, match="outside the board"):
            calibrate(b, sim_smu, [(64, 0)], [1e5], VOLTS, connect=conn)
        with pytest.raises(ValueError, match="twice"):
            calibrate(b, sim_smu, [(0, 63), (0, 63)], [5e4, 5e4], VOLTS, connect=conn)
        # the SMU measures the declared 100 kOhm, the board's cell is 50 kOhm: fine for the SMU check,
        # but a declared value far from what the SMU sees means it is on the wrong resistor
        with pytest.raises(ValueError, match="check the wiring"):
            calibrate(b, sim_smu, [(0, 63)], [1e5], VOLTS, connect=lambda c: sim_smu.connect(5e4))
        with pytest.raises(ComplianceError):
            calibrate(b, sim_smu, CELLS, OHMS, VOLTS, connect=conn, compliance_a=1e-6)
        assert not sim_smu.output_on  # left off after a failure
    with Board.open("sim://?seed=7&ref=0:63:20k,1:63:1M") as b:
        with pytest.raises(ValueError, match="saturated"):
            calibrate(b, sim_smu, [(0, 63), (1, 63)], [2e4, 1e6], [0.2, 0.3], connect=conn)


# ------------------------------------------------------------------------------ file
@pytest.fixture(scope="module")
def cal() -> ReadPathCalibration:
    s = SimulatedResistorSmu.open(*SMU["2400"], max_voltage_v=0.5, seed=5)
    try:
        with Board.open(URL) as b:
            return calibrate(b, s, CELLS, OHMS, VOLTS[::2], connect=lambda c: s.connect(c.ohms))
    finally:
        s.close()


@pytest.mark.parametrize("suffix", [".h5", ".json"])
def test_file_round_trip(cal: ReadPathCalibration, tmp_path: Path, suffix: str) -> None:
    path = cal.save(tmp_path / f"cal{suffix}")
    back = ReadPathCalibration.load(path)
    assert back == cal
    assert json.loads(json.dumps(back.to_dict())) == cal.to_dict()  # what run files embed
    x = np.array([1e-7, 2e-6])
    assert back.apply(x) == pytest.approx(cal.gain * x + cal.offset_a)
    assert isinstance(back.apply(1e-6), float)
    with pytest.raises(FileExistsError, match="--force"):
        cal.save(path)
    cal.save(path, force=True)


def test_hdf5_layout(cal: ReadPathCalibration, tmp_path: Path) -> None:
    path = cal.save(tmp_path / "cal.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "rram-hil/readpath-calibration" and f.attrs["version"] == 1
        assert f.attrs["gain"] == pytest.approx(cal.gain)
        assert list(f["reference_cells"]["ohms"]) == OHMS
        assert f["points"].shape == (len(CELLS) * 3,)
        assert json.loads(f.attrs["board_json"])["board_id"] == "SIM-RRAM"


def test_load_errors_are_one_line(cal: ReadPathCalibration, tmp_path: Path) -> None:
    cases: list[tuple[Path, type[Exception], str]] = []
    cases.append((tmp_path / "missing.h5", FileNotFoundError, "not found"))
    (tmp_path / "text.h5").write_text("hello")
    cases.append((tmp_path / "text.h5", CalibrationFileError, "not a readable HDF5"))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "rram-hil/noise-profile"
    cases.append((tmp_path / "other.h5", CalibrationFileError, "not a read-path calibration"))
    with h5py.File(tmp_path / "nodata.h5", "w") as f:
        f.attrs["format"] = "rram-hil/readpath-calibration"
    cases.append((tmp_path / "nodata.h5", CalibrationFileError, "lacks"))
    (tmp_path / "bad.json").write_text("{not json")
    cases.append((tmp_path / "bad.json", CalibrationFileError, "not a JSON"))
    d = cal.to_dict()
    changes: list[tuple[str, dict[str, object]]] = [
        ("newer.json", {"version": 99}),
        ("nogain.json", {"gain": None}),
        ("absurd.json", {"gain": 40.0}),
    ]
    for name, change in changes:
        dd = {**d, **change}
        if change.get("gain", 0) is None:
            del dd["gain"]
        (tmp_path / name).write_text(json.dumps(dd))
    cases += [
        (tmp_path / "newer.json", CalibrationFileError, "newer"),
        (tmp_path / "nogain.json", CalibrationFileError, "lacks 'gain'"),
        (tmp_path / "absurd.json", CalibrationFileError, "implausible"),
    ]
    for path, exc, msg in cases:
        with pytest.raises(exc, match=msg) as info:
            ReadPathCalibration.load(path)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ CLI
def test_cli_board_info_json_and_table() -> None:
    r = _run("board", "info", "--json", "--port", "sim://?seed=2&rows=32&cols=16&board_id=BENCH-7")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["board_id"] == "BENCH-7" and (d["rows"], d["cols"]) == (32, 16)
    assert (
        d["protocol"].startswith(f"{PROTOCOL_MAJOR}.")
        and d["read_v"] == [0.0, 0.3]
        and d["max_compliance_a"] == pytest.approx(5e-4)
    )
    assert "WRITE_VERIFY" in d["capabilities"] and d["session_id"] > 0
    r = _run("board", "info")
    assert r.exit_code == 0 and "SIM-RRAM" in r.output and "64 x 64" in r.output and "0 .. 0.3 V" in r.output


@pytest.mark.parametrize(
    "port, msg",
    [
        ("/dev/does-not-exist", "cannot open port"),
        ("sim://?seed=x", "not a valid int"),
        ("nope://x", "cannot open port"),
    ],
)
def test_cli_board_info_bad_port_one_line(port: str, msg: str) -> None:
    r = CliRunner().invoke(cli, ["board", "info", "--port", port])
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and msg in r.output and len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_cli_board_info_wrong_protocol_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sim_backend.firmware.PROTOCOL_MAJOR", 9)
    r = CliRunner().invoke(cli, ["board", "info"])
    assert r.exit_code == 1 and "protocol 9." in r.output and len(r.output.strip().splitlines()) == 1
    with pytest.raises(VersionError):
        Board.open("sim://?seed=0")


def _calibrate_args(out: Path, dialect: str = "2450", backend: str = "") -> list[str]:
    args = [
        "board",
        "calibrate",
        "--port",
        URL,
        "--smu",
        SMU[dialect][0],
        "--visa-backend",
        backend or SMU[dialect][1],
        "--resistors",
        "50k,100k,200k,500k,1M",
        "--voltages",
        "0.05,0.15,0.3",
        "--out",
        str(out),
    ]
    for r, c in CELLS:
        args += ["--ref-cell", f"{r},{c}"]
    return args


def test_cli_calibrate_writes_the_file_and_refuses_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "calib.h5"
    r = _run(*_calibrate_args(out), "--json")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output)
    cal = ReadPathCalibration.load(out)
    assert printed["gain"] == pytest.approx(cal.gain) and printed["out"] == str(out)
    with Board.open(URL) as b:
        gain, offset = _true_correction(b)
    assert cal.gain == pytest.approx(gain, rel=2e-3) and cal.offset_a == pytest.approx(offset, abs=0.3e-9)
    assert [c.ohms for c in cal.reference_cells] == OHMS and cal.voltages_v == [0.05, 0.15, 0.3]
    r = CliRunner().invoke(cli, _calibrate_args(out))
    assert r.exit_code == 1 and "already exists" in r.output and "--force" in r.output
    r = _run(*_calibrate_args(out, "2400"), "--force")
    assert r.exit_code == 0 and "gain" in r.output and f"wrote {out}" in r.output
    assert "MODEL 2400" in ReadPathCalibration.load(out).smu_idn


@pytest.mark.parametrize("backend", ["smu_2400@sim", "smu_2400.yaml@sim", "{path}@sim"])
def test_cli_calibrate_other_spellings_of_the_simulated_smu(tmp_path: Path, backend: str) -> None:
    out = tmp_path / "calib.json"
    r = _run(*_calibrate_args(out, "2400", backend.format(path=packaged_sim_files()["2400"])), "--json")
    assert r.exit_code == 0, r.output
    assert "MODEL 2400" in ReadPathCalibration.load(out).smu_idn


def test_cli_calibrate_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    args = _calibrate_args(out)
    r = CliRunner().invoke(cli, [*args[:-2], "--resistors", "50k,1M", "--out", str(out)])
    assert r.exit_code == 1 and "one resistor per cell" in r.output
    r = CliRunner().invoke(cli, [*args, "--resistors", "50q"])
    assert r.exit_code == 2 and "not a resistance" in r.output
    r = CliRunner().invoke(cli, [*args, "--smu-max-voltage", "0.2"])  # 0.3 V read point beyond the limit
    assert r.exit_code == 1 and "safety limit" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, [*args, "--smu", "GPIB0::3::INSTR", "--visa-backend", str(tmp_path / "x.yaml@sim")])
    assert r.exit_code == 1 and "not found" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, [*args, "--visa-backend", "2600@sim"])
    assert r.exit_code == 1 and "packaged simulated SMUs: 2400@sim, 2450@sim" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, [*args, "--port", "/dev/does-not-exist"])
    assert r.exit_code == 1 and "cannot open port" in r.output
    assert not out.exists()
