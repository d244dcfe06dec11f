"""SMU driver (hil.hardware.instruments.smu) against pyvisa-sim models of a Keithley 2400 and a 2450 (tests/data/*.yaml)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hil.hardware.instruments import (
    ComplianceError,
    SimulatedResistorSmu,
    Smu,
    SmuConnectionError,
    SmuError,
    dialect_from_idn,
)
from tests.helpers import DATA

RESOURCES = {
    "2400": ("GPIB0::24::INSTR", f"{DATA / 'smu_2400.yaml'}@sim"),
    "2450": ("USB0::0x05E6::0x2450::04096331::INSTR", f"{DATA / 'smu_2450.yaml'}@sim"),
}
VOLTAGE_QUERY = {"2400": ":SOUR:VOLT:LEV?", "2450": ":SOUR:VOLT?"}
COMPLIANCE_QUERY = {"2400": ":SENS:CURR:PROT?", "2450": ":SOUR:VOLT:ILIM?"}


class _Spy:
    """Records what the driver writes to the VISA resource."""

    def __init__(self, smu: Smu) -> None:
        self.sent: list[str] = []
        self._write = smu.resource.write
        smu.resource.write = self  # type: ignore[method-assign]

    def __call__(self, cmd: str) -> int:
        self.sent.append(cmd)
        return self._write(cmd)


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


def test_configure_sends_the_dialect_commands(smu: Smu) -> None:
    spy = _Spy(smu)
    smu.configure_voltage_source(2.5e-5, nplc=2.0)
    expected_limit = ":SENS:CURR:PROT 2.500000E-05" if smu.dialect.name == "2400" else ":SOUR:VOLT:ILIM 2.500000E-05"
    assert expected_limit in spy.sent
    assert ":SENS:CURR:NPLC 2.000000E+00" in spy.sent
    assert ':SENS:FUNC "CURR"' in spy.sent and ":SOUR:FUNC VOLT" in spy.sent
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


def test_safety_limit_refuses_before_writing(smu: Smu) -> None:
    smu.set_voltage(0.2)
    spy = _Spy(smu)
    for bad in (1.5, -1.0001, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="safety limit"):
            smu.set_voltage(bad)
    assert spy.sent == []
    assert float(smu.resource.query(VOLTAGE_QUERY[smu.dialect.name])) == pytest.approx(0.2)


def test_bad_settings_refused(smu: Smu) -> None:
    spy = _Spy(smu)
    for compliance in (0.0, -1e-3, 2.0, float("nan")):
        with pytest.raises(ValueError, match="compliance"):
            smu.configure_voltage_source(compliance)
    with pytest.raises(ValueError, match="NPLC"):
        smu.configure_voltage_source(1e-3, nplc=50)
    assert spy.sent == []
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
    for cmd in smu.dialect.sim_reading(smu.voltage_v, current, tripped):
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
    spy = _Spy(s)
    s.close()
    assert spy.sent == [":OUTP 0"]
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
    with pytest.raises(SmuConnectionError, match="GPIB0::9::INSTR"):
        Smu.open("GPIB0::9::INSTR", RESOURCES["2400"][1], max_voltage_v=1.0, timeout_ms=100)
    with pytest.raises(ValueError, match="dialect"):
        Smu.open(*RESOURCES["2400"], max_voltage_v=1.0, dialect="2600")
