"""SMU driver (hil.hardware.instruments): its exact SCPI pinned with an expected-protocol fake, and the driver
against the packaged pyvisa-sim models of a Keithley 2400 and a 2450 (hil/hardware/instruments/sim/*.yaml)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import hil.hardware.instruments as instruments
from hil.hardware.instruments import (
    ComplianceError,
    Smu,
    SmuConnectionError,
    SmuError,
    dialect_from_idn,
    packaged_sim_files,
    resolve_backend,
)
from hil.hardware.instruments.simulated import LOAD_READING, SimulatedResistorSmu
from tests.helpers.expected_protocol import ExpectedProtocolResource, ProtocolMismatch, Step, expected_protocol

RESOURCES = {
    "2400": ("GPIB0::24::INSTR", "2400@sim"),
    "2450": ("USB0::0x05E6::0x2450::04096331::INSTR", "2450@sim"),
}
VOLTAGE_QUERY = {"2400": ":SOUR:VOLT:LEV?", "2450": ":SOUR:VOLT?"}
COMPLIANCE_QUERY = {"2400": ":SENS:CURR:PROT?", "2450": ":SOUR:VOLT:ILIM?"}


# ------------------------------------------------------------------------------ packaged simulation files
def test_packaged_sim_files_are_package_resources() -> None:
    files = packaged_sim_files()
    assert list(files) == ["2400", "2450"]
    package_dir = Path(instruments.__file__).resolve().parent
    for dialect, path in files.items():
        assert path.is_file() and path.resolve().parent == package_dir / "sim"
        text = (resources.files("hil.hardware.instruments") / "sim" / f"smu_{dialect}.yaml").read_text()
        assert f"keithley {dialect}" in text and text == path.read_text()


def test_package_data_ships_every_sim_file() -> None:
    """pyproject's package-data must name each file in sim/, or a wheel would install without it."""
    if sys.version_info < (3, 11):
        pytest.skip("reading pyproject.toml needs tomllib (Python 3.11)")
    else:
        import tomllib

        config = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
        globs = config["tool"]["setuptools"]["package-data"]["hil.hardware.instruments"]
        package_dir = Path(instruments.__file__).resolve().parent
        shipped = {p for g in globs for p in package_dir.glob(g)}
        assert shipped and set((package_dir / "sim").iterdir()) <= shipped


@pytest.mark.parametrize("short", ["2400@sim", "smu_2400@sim", "smu_2400.yaml@sim"])
def test_short_sim_backend_resolves_to_the_packaged_file(short: str) -> None:
    assert resolve_backend(short) == f"{packaged_sim_files()['2400']}@sim"


def test_other_backends_are_kept_and_unknown_sim_files_refused(tmp_path: Path) -> None:
    for kept in ("", "@py", "@sim", "@ivi"):
        assert resolve_backend(kept) == kept
    own = tmp_path / "bench.yaml"
    own.write_text("spec: '1.1'\n")
    assert resolve_backend(f"{own}@sim") == f"{own}@sim"
    for missing in ("2600@sim", f"{tmp_path / 'x.yaml'}@sim", "nowhere/2400@sim"):
        with pytest.raises(FileNotFoundError, match="not found") as info:
            resolve_backend(missing)
        assert "2400@sim, 2450@sim" in str(info.value) and "\n" not in str(info.value)


def test_short_sim_backend_works_outside_a_checkout(tmp_path: Path) -> None:
    """From a foreign working directory, only the installed package can supply the instrument file."""
    code = "from hil.hardware.instruments import Smu\nprint(Smu.open('GPIB0::24::INSTR', '2400@sim', max_voltage_v=1.0).idn())"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "MODEL 2400" in r.stdout


# ------------------------------------------------------------------------------ exact SCPI (expected protocol)
IDN = {
    "2400": "KEITHLEY INSTRUMENTS INC.,MODEL 2400,4096331,C33 Mar 31 2015 09:32:39/A02  /S/K",
    "2450": "KEITHLEY INSTRUMENTS,MODEL 2450,04096331,1.7.3b",
}
SETUP: dict[str, list[Step]] = {  # *IDN?, reset(), configure_voltage_source(1e-4, nplc=1)
    "2400": [
        ("*IDN?", IDN["2400"]),
        ("*RST", None),
        ("*CLS", None),
        (":SOUR:FUNC VOLT", None),
        (":SOUR:VOLT:MODE FIX", None),
        (":SOUR:VOLT:RANG:AUTO ON", None),
        (':SENS:FUNC "CURR"', None),
        (":SENS:CURR:PROT 1.000000E-04", None),
        (":SENS:CURR:RANG:AUTO ON", None),
        (":SENS:CURR:NPLC 1.000000E+00", None),
        (":FORM:ELEM VOLT,CURR,STAT", None),
        (":SOUR:VOLT:LEV 0.000000E+00", None),
        (":SYST:ERR?", '0,"No error"'),
    ],
    "2450": [
        ("*IDN?", IDN["2450"]),
        ("*RST", None),
        ("*CLS", None),
        (":SOUR:FUNC VOLT", None),
        (":SOUR:VOLT:RANG:AUTO ON", None),
        (":SOUR:VOLT:ILIM 1.000000E-04", None),
        (':SENS:FUNC "CURR"', None),
        (":SENS:CURR:RANG:AUTO ON", None),
        (":SENS:CURR:NPLC 1.000000E+00", None),
        (":SOUR:VOLT 0.000000E+00", None),
        (":SYST:ERR?", '0,"No error;0;0 0"'),
    ],
}
SOURCE_0V1_ON = {
    "2400": [(":SOUR:VOLT:LEV 1.000000E-01", None), (":OUTP 1", None)],
    "2450": [(":SOUR:VOLT 1.000000E-01", None), (":OUTP 1", None)],
}
STATUS_OK, STATUS_TRIPPED = "+2.048000E+04", "+2.048800E+04"  # 2400 status word: V-source, I-meas (+ bit 3)


def _configured(smu: Smu) -> Smu:
    smu.reset()
    smu.configure_voltage_source(1e-4, nplc=1.0)
    return smu


@pytest.mark.parametrize("dialect", ["2400", "2450"])
def test_setup_sequence(dialect: str) -> None:
    with expected_protocol(Smu, SETUP[dialect], max_voltage_v=1.0) as smu:
        _configured(smu)
        assert smu.dialect.name == dialect and smu.compliance_a == 1e-4 and smu.voltage_v == 0.0


@pytest.mark.parametrize(
    "dialect, reading",
    [
        ("2400", [(":READ?", f"+1.000000E-01,+2.000000E-06,{STATUS_OK}")]),
        ("2450", [(":READ?", "+2.000000E-06"), (":SOUR:VOLT:ILIM:TRIP?", "0")]),
    ],
)
def test_source_and_measure(dialect: str, reading: list[Step]) -> None:
    steps = [*SETUP[dialect], *SOURCE_0V1_ON[dialect], *reading, (":OUTP 0", None)]
    with expected_protocol(Smu, steps, max_voltage_v=1.0) as smu:
        _configured(smu).set_voltage(0.1)
        smu.output(True)
        assert smu.measure_current() == 2e-6
        smu.close()
        assert isinstance(smu.resource, ExpectedProtocolResource) and smu.resource.closed


@pytest.mark.parametrize(
    "dialect, reading",
    [
        ("2400", [(":READ?", f"+1.000000E-01,+1.000000E-04,{STATUS_TRIPPED}")]),
        ("2450", [(":READ?", "+1.000000E-04"), (":SOUR:VOLT:ILIM:TRIP?", "1")]),
    ],
)
def test_compliance_detection(dialect: str, reading: list[Step]) -> None:
    with expected_protocol(Smu, [*SETUP[dialect], *SOURCE_0V1_ON[dialect], *reading], max_voltage_v=1.0) as smu:
        _configured(smu).set_voltage(0.1)
        smu.output(True)
        with pytest.raises(ComplianceError, match=r"compliance at 0.1 V: current limit 0.0001 A reached"):
            smu.measure_current()


def test_refusals_send_nothing() -> None:
    """Beyond the safety limit or with bad settings the driver raises before a byte reaches the SMU."""
    with expected_protocol(Smu, SETUP["2400"], max_voltage_v=0.5) as smu:
        _configured(smu)
        for bad in (0.5001, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="safety limit"):
                smu.set_voltage(bad)
        for compliance in (0.0, -1e-3, 2.0, float("nan")):
            with pytest.raises(ValueError, match="compliance"):
                smu.configure_voltage_source(compliance)
        with pytest.raises(ValueError, match="NPLC"):
            smu.configure_voltage_source(1e-3, nplc=50)


def test_error_queue_is_drained_and_the_first_error_named() -> None:
    errors: list[Step] = [
        (":SYST:ERR?", '-113,"Undefined header"'),
        (":SYST:ERR?", '-222,"Data out of range"'),
        (":SYST:ERR?", '0,"No error"'),
    ]
    with expected_protocol(Smu, errors, max_voltage_v=1.0, dialect="2400") as smu:
        with pytest.raises(SmuError, match=r'2 error\(s\) after probing: -113,"Undefined header"'):
            smu.check_errors("probing")


def test_expected_protocol_fails_on_a_wrong_or_missing_command() -> None:
    with pytest.raises(ProtocolMismatch, match=r"step 1: expected '\*CLS', got '\*RST'"):
        with expected_protocol(Smu, [("*RST", None), ("*CLS", None)], max_voltage_v=1.0, dialect="2400") as smu:
            smu.resource.write("*RST")
            smu.resource.write("*RST")
    with pytest.raises(ProtocolMismatch, match=r"never sent: '\*CLS'"):
        with expected_protocol(Smu, [("*RST", None), ("*CLS", None)], max_voltage_v=1.0, dialect="2400") as smu:
            smu.resource.write("*RST")
    with pytest.raises(ProtocolMismatch, match="unexpected command ':OUTP 0'"):
        with expected_protocol(Smu, [], max_voltage_v=1.0, dialect="2400") as smu:
            smu.resource.write(":OUTP 0")
    with pytest.raises(ProtocolMismatch, match="queried, but the expected step is a write"):
        with expected_protocol(Smu, [("*IDN?", None)], max_voltage_v=1.0):
            pass
    fake = ExpectedProtocolResource([("*IDN?", IDN["2400"])])
    fake.write("*IDN?")
    with pytest.raises(ProtocolMismatch, match="never read"):
        fake.assert_done()


# ------------------------------------------------------------------------------ against pyvisa-sim models
@pytest.fixture(params=["2400", "2450"])
def smu(request: pytest.FixtureRequest) -> Iterator[Smu]:
    name, backend = RESOURCES[request.param]
    s = Smu.open(name, backend, max_voltage_v=1.0)
    # pyvisa-sim keeps instrument state for the whole process: start from a known one
    if request.param == "2450":
        s.resource.write("SIM:TRIP 0")
    s.reset()
    s.configure_voltage_source(1e-4, nplc=1.0)
    yield s
    s.close()


@pytest.mark.parametrize("dialect", ["2400", "2450"])
def test_open_detects_dialect_from_idn(dialect: str) -> None:
    with Smu.open(*RESOURCES[dialect], max_voltage_v=1.0) as s:
        assert s.dialect.name == dialect
        assert f"MODEL {dialect}" in s.idn()


def test_dialect_from_idn() -> None:
    assert dialect_from_idn("KEITHLEY INSTRUMENTS INC.,MODEL 2410,1,C30") == "2400"
    assert dialect_from_idn("KEITHLEY INSTRUMENTS,MODEL 2460,1,1.0") == "2450"
    with pytest.raises(ValueError, match="dialect"):
        dialect_from_idn("Agilent Technologies,34461A,MY1,A.02")


def test_sim_model_takes_the_configuration(smu: Smu) -> None:
    smu.configure_voltage_source(2.5e-5, nplc=2.0)
    assert float(smu.resource.query(COMPLIANCE_QUERY[smu.dialect.name])) == pytest.approx(2.5e-5)
    assert float(smu.resource.query(":SENS:CURR:NPLC?")) == pytest.approx(2.0)
    assert smu.compliance_a == pytest.approx(2.5e-5)


def test_instrument_errors_are_reported(smu: Smu) -> None:
    smu.resource.write(":SOUR:BOGUS 1")  # not a command of this instrument: queued as -100
    with pytest.raises(SmuError, match="-100"):
        smu.check_errors()
    smu.check_errors()  # the queue was drained


def test_set_voltage_and_output(smu: Smu) -> None:
    smu.set_voltage(-0.125)
    assert float(smu.resource.query(VOLTAGE_QUERY[smu.dialect.name])) == pytest.approx(-0.125)
    smu.output(True)
    assert smu.resource.query(":OUTP?").strip() == "1"
    smu.output(False)
    assert smu.resource.query(":OUTP?").strip() == "0"


def test_refused_voltage_leaves_the_instrument_as_it_was(smu: Smu) -> None:
    smu.set_voltage(0.2)
    with pytest.raises(ValueError, match="safety limit"):
        smu.set_voltage(1.5)
    assert float(smu.resource.query(VOLTAGE_QUERY[smu.dialect.name])) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="safety limit"):
        Smu(smu.resource, max_voltage_v=0.0)


def test_order_of_operations_enforced(smu: Smu) -> None:
    smu.reset()
    with pytest.raises(SmuError, match="configure_voltage_source"):
        smu.set_voltage(0.1)
    with pytest.raises(SmuError, match="configure_voltage_source"):
        smu.output(True)
    smu.configure_voltage_source(1e-4)
    with pytest.raises(SmuError, match="output is off"):
        smu.measure_current()


def _load(smu: Smu, current: float, tripped: bool = False) -> None:
    for cmd in LOAD_READING[smu.dialect.name](smu.voltage_v, current, tripped):
        smu.resource.write(cmd)


def test_measure_current_parses_the_reading(smu: Smu) -> None:
    smu.set_voltage(0.1)
    smu.output(True)
    for i in (1.234567e-6, -3.5e-9, 0.0):
        _load(smu, i)
        assert smu.measure_current() == pytest.approx(i, rel=1e-6, abs=1e-15)


def test_compliance_is_detected(smu: Smu) -> None:
    smu.set_voltage(0.3)
    smu.output(True)
    _load(smu, 1e-4, tripped=True)
    with pytest.raises(ComplianceError, match="compliance at 0.3 V"):
        smu.measure_current()
    _load(smu, 5e-5, tripped=False)
    assert smu.measure_current() == pytest.approx(5e-5)


def test_malformed_and_overflow_readings(smu: Smu) -> None:
    smu.set_voltage(0.1)
    smu.output(True)
    smu.resource.write("SIM:READ garbage")
    with pytest.raises(SmuError, match="unexpected reply"):
        smu.measure_current()
    smu.resource.write("SIM:READ " + ",".join(["+9.910000E+37"] * smu.dialect.n_fields))
    with pytest.raises(SmuError, match="overflow"):
        smu.measure_current()


def test_2400_status_word_compliance_bit_only() -> None:
    with Smu.open(*RESOURCES["2400"], max_voltage_v=1.0) as s:
        s.reset()
        s.configure_voltage_source(1e-3)
        s.set_voltage(0.1)
        s.output(True)
        s.resource.write(f"SIM:READ +1.000000E-01,+2.000000E-06,{float(1 << 12 | 1 << 14 | 1):+.6E}")  # no bit 3
        assert s.measure_current() == pytest.approx(2e-6)
        s.resource.write(f"SIM:READ +1.000000E-01,+1.000000E-03,{float(1 << 3):+.6E}")
        with pytest.raises(ComplianceError):
            s.measure_current()


def test_close_switches_output_off() -> None:
    s = Smu.open(*RESOURCES["2400"], max_voltage_v=1.0)
    s.reset()
    s.configure_voltage_source(1e-4)
    s.output(True)
    s.close()
    with Smu.open(*RESOURCES["2400"], max_voltage_v=1.0) as again:
        assert again.resource.query(":OUTP?").strip() == "0"


@pytest.mark.parametrize("dialect", ["2400", "2450"])
def test_simulated_resistor_ohms_law_and_clamp(dialect: str) -> None:
    with SimulatedResistorSmu.open(*RESOURCES[dialect], max_voltage_v=1.0, seed=1) as s:
        s.reset()
        s.configure_voltage_source(1e-5)
        s.connect(2e5)
        s.output(True)
        got = []
        for v in (0.05, 0.1, -0.2, 0.3):
            s.set_voltage(v)
            got.append(s.measure_current())
        assert np.allclose(got, np.array([0.05, 0.1, -0.2, 0.3]) / 2e5, rtol=2e-4)
        s.connect(1e4)  # 0.3 V / 10 kOhm = 30 uA > 10 uA limit
        with pytest.raises(ComplianceError):
            s.measure_current()
        s.connect(2e5)
        assert s.measure_current() == pytest.approx(1.5e-6, rel=2e-4)  # trip state cleared with the reading


@pytest.mark.filterwarnings("ignore:read string doesn't end with termination characters")
def test_open_errors_are_connection_errors(tmp_path: Path) -> None:
    with pytest.raises(SmuConnectionError, match="not found"):
        Smu.open("GPIB0::24::INSTR", f"{tmp_path / 'missing.yaml'}@sim", max_voltage_v=1.0)
    with pytest.raises(SmuConnectionError, match="packaged simulated SMUs: 2400@sim, 2450@sim"):
        Smu.open("GPIB0::24::INSTR", "2401@sim", max_voltage_v=1.0)
    with pytest.raises(SmuConnectionError, match="GPIB0::9::INSTR"):
        Smu.open("GPIB0::9::INSTR", RESOURCES["2400"][1], max_voltage_v=1.0, timeout_ms=100)
    with pytest.raises(ValueError, match="dialect"):
        Smu.open(*RESOURCES["2400"], max_voltage_v=1.0, dialect="2600")
