"""Source-measure unit over VISA (SCPI, Keithley 2400 / 2450 style): source a voltage, measure the current.

Used as the reference ammeter when calibrating the board's read path (`rram board calibrate`).
The two SCPI dialects differ only in a few commands, kept in one table (`DIALECTS`). Every voltage
is checked against a user-given safety limit before anything is written to the instrument, and
every reading is checked for compliance (current limit reached), because a clamped current is not
the current the resistor would draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import pyvisa

from hil.hardware.instruments.backends import resolve_backend


class SmuError(RuntimeError):
    """The SMU answered something unexpected or reported an error."""


class SmuConnectionError(ConnectionError):
    """The VISA resource could not be opened or does not answer."""


class ComplianceError(SmuError):
    """The SMU hit its current limit: the reading is the limit, not the load's current."""


def _num(x: float) -> str:
    """SCPI number: always d.ddddddE+xx (unambiguous on every instrument, and parseable by pyvisa-sim)."""
    return f"{x:.6E}"


@dataclass(frozen=True)
class Dialect:
    """The commands of one SCPI family for source-V / measure-I."""

    name: str
    configure: tuple[str, ...]  # templates with {compliance} and {nplc}
    set_voltage: str  # template with {v}
    read: str
    n_fields: int  # fields in the :READ? reply
    current_field: int
    status_field: int | None  # status word in the :READ? reply (2400: bit 3 = compliance)
    compliance_bit: int | None
    trip_query: str | None  # separate compliance query (2450)
    max_compliance_a: float
    max_voltage_v: float


DIALECTS: dict[str, Dialect] = {
    "2400": Dialect(
        name="2400",
        configure=(
            ":SOUR:FUNC VOLT",
            ":SOUR:VOLT:MODE FIX",
            ":SOUR:VOLT:RANG:AUTO ON",
            ':SENS:FUNC "CURR"',
            ":SENS:CURR:PROT {compliance}",
            ":SENS:CURR:RANG:AUTO ON",
            ":SENS:CURR:NPLC {nplc}",
            ":FORM:ELEM VOLT,CURR,STAT",
        ),
        set_voltage=":SOUR:VOLT:LEV {v}",
        read=":READ?",
        n_fields=3,
        current_field=1,
        status_field=2,
        compliance_bit=3,
        trip_query=None,
        max_compliance_a=1.05,
        max_voltage_v=210.0,
    ),
    "2450": Dialect(
        name="2450",
        configure=(
            ":SOUR:FUNC VOLT",
            ":SOUR:VOLT:RANG:AUTO ON",
            ":SOUR:VOLT:ILIM {compliance}",
            ':SENS:FUNC "CURR"',
            ":SENS:CURR:RANG:AUTO ON",
            ":SENS:CURR:NPLC {nplc}",
        ),
        set_voltage=":SOUR:VOLT {v}",
        read=":READ?",
        n_fields=1,
        current_field=0,
        status_field=None,
        compliance_bit=None,
        trip_query=":SOUR:VOLT:ILIM:TRIP?",
        max_compliance_a=1.05,
        max_voltage_v=210.0,
    ),
}

_S = TypeVar("_S", bound="Smu")
_OVERFLOW = 9.9e37  # SCPI "not a number / overflow" value (9.91E37)


def dialect_from_idn(idn: str) -> str:
    """'2400' or '2450' from an *IDN? reply; ValueError for an instrument this driver does not know."""
    fields = [f.strip().upper() for f in idn.split(",")]
    model = fields[1] if len(fields) > 1 else ""
    if "2450" in model or "2460" in model or "2461" in model:
        return "2450"
    if any(m in model for m in ("2400", "2401", "2410", "2420", "2425", "2430", "2440")):
        return "2400"
    raise ValueError(f"unknown SMU {idn.strip()!r}: give the SCPI dialect explicitly (2400 or 2450)")


class Smu:
    """A source-measure unit sourcing voltage and measuring current, with a voltage safety limit."""

    def __init__(
        self,
        resource: pyvisa.resources.MessageBasedResource,
        *,
        max_voltage_v: float,
        dialect: str = "auto",
        name: str = "",
    ) -> None:
        if not (math.isfinite(max_voltage_v) and max_voltage_v > 0):
            raise ValueError(f"SMU safety limit must be a positive voltage, got {max_voltage_v!r}")
        self.resource = resource
        self.name = name or str(getattr(resource, "resource_name", "") or "SMU")
        self._idn = ""
        if dialect == "auto":
            dialect = dialect_from_idn(self.idn())
        if dialect not in DIALECTS:
            raise ValueError(f"unknown SMU dialect {dialect!r} (known: {', '.join(DIALECTS)})")
        self.dialect = DIALECTS[dialect]
        self.max_voltage_v = min(float(max_voltage_v), self.dialect.max_voltage_v)
        self.compliance_a: float | None = None
        self.voltage_v = 0.0
        self.output_on = False

    @classmethod
    def open(
        cls: type[_S],
        resource_name: str,
        backend: str = "",
        *,
        max_voltage_v: float,
        dialect: str = "auto",
        timeout_ms: int = 5000,
        **kwargs: object,
    ) -> _S:
        """Open a VISA resource ('GPIB0::24::INSTR'); backend '' (system VISA), '@py', 'file.yaml@sim' or '2400@sim'."""
        try:
            backend = resolve_backend(backend)
        except FileNotFoundError as exc:
            raise SmuConnectionError(str(exc)) from None
        try:
            rm = pyvisa.ResourceManager(backend)
            res = rm.open_resource(resource_name, read_termination="\n", write_termination="\n", timeout=timeout_ms)
        except (pyvisa.errors.Error, OSError, ValueError, LookupError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise SmuConnectionError(
                f"cannot open SMU {resource_name!r} (VISA backend {backend or 'default'!r}): {reason}"
            ) from None
        try:
            # **kwargs are the subclass's own constructor keywords (SimulatedResistorSmu's load), which this
            # base-class signature cannot name
            smu = cls(res, max_voltage_v=max_voltage_v, dialect=dialect, name=resource_name, **kwargs)  # type: ignore[arg-type]
            smu.idn()  # a resource that does not answer fails here, not in the middle of a measurement
            return smu
        except BaseException:
            res.close()
            raise

    # ------------------------------------------------------------------------------ low level
    def _write(self, cmd: str) -> None:
        try:
            self.resource.write(cmd)
        except pyvisa.errors.VisaIOError as exc:
            raise SmuConnectionError(f"SMU {self.name} did not take {cmd!r}: {exc.description}") from None

    def _query(self, cmd: str) -> str:
        try:
            return self.resource.query(cmd).strip()
        except pyvisa.errors.VisaIOError as exc:
            raise SmuConnectionError(f"SMU {self.name} did not answer {cmd!r}: {exc.description}") from None

    def check_errors(self, after: str = "") -> None:
        """Drain :SYST:ERR? and raise SmuError naming the first error the SMU queued."""
        errors = []
        for _ in range(32):
            reply = self._query(":SYST:ERR?")
            code = reply.split(",", 1)[0].strip()
            try:
                if int(float(code)) == 0:
                    break
            except ValueError:
                raise SmuError(f"unexpected reply to :SYST:ERR?: {reply!r}") from None
            errors.append(reply)
        if errors:
            where = f" after {after}" if after else ""
            raise SmuError(f"SMU reported {len(errors)} error(s){where}: {errors[0]}")

    # ------------------------------------------------------------------------------ operations
    def idn(self) -> str:
        """The instrument's *IDN? identity string (cached)."""
        if not self._idn:
            self._idn = self._query("*IDN?")
            if not self._idn:
                raise SmuConnectionError(f"SMU {self.name} sent an empty *IDN? reply")
        return self._idn

    def reset(self) -> None:
        """*RST and *CLS: output off, default settings, empty error queue."""
        self._write("*RST")
        self._write("*CLS")
        self.output_on = False
        self.voltage_v = 0.0
        self.compliance_a = None

    def configure_voltage_source(self, compliance_a: float, nplc: float = 1.0) -> None:
        """Source voltage (0 V), measure current with auto range, current limit `compliance_a`, `nplc` power-line cycles."""
        d = self.dialect
        if not (math.isfinite(compliance_a) and 0 < compliance_a <= d.max_compliance_a):
            raise ValueError(f"SMU compliance must be in (0, {d.max_compliance_a}] A, got {compliance_a!r}")
        if not (math.isfinite(nplc) and 0.01 <= nplc <= 10):
            raise ValueError(f"SMU integration time must be 0.01..10 NPLC, got {nplc!r}")
        for template in d.configure:
            self._write(template.format(compliance=_num(compliance_a), nplc=_num(nplc)))
        self._write(d.set_voltage.format(v=_num(0.0)))
        self.voltage_v = 0.0
        self.check_errors("configuring the voltage source")
        self.compliance_a = float(compliance_a)

    def set_voltage(self, v: float) -> None:
        """Set the source level; refuses (ValueError, nothing sent) beyond the safety limit."""
        if not math.isfinite(v) or abs(v) > self.max_voltage_v:
            raise ValueError(f"SMU voltage {v!r} V is beyond the safety limit of +-{self.max_voltage_v:g} V")
        if self.compliance_a is None:
            raise SmuError("configure_voltage_source() must come before set_voltage() (no current limit set)")
        self._write(self.dialect.set_voltage.format(v=_num(v)))
        self.voltage_v = float(v)

    def output(self, on: bool) -> None:
        """Switch the output on or off."""
        if on and self.compliance_a is None:
            raise SmuError("configure_voltage_source() must come before output(True) (no current limit set)")
        self._write(f":OUTP {int(bool(on))}")
        self.output_on = bool(on)

    def measure_current(self) -> float:
        """One :READ? (A); ComplianceError if the SMU is at its current limit."""
        if not self.output_on:
            raise SmuError("SMU output is off: switch it on before measuring")
        d = self.dialect
        reply = self._query(d.read)
        fields = [f.strip() for f in reply.split(",")]
        try:
            if len(fields) != d.n_fields:
                raise ValueError
            current = float(fields[d.current_field])
            status = int(float(fields[d.status_field])) if d.status_field is not None else 0
        except ValueError:
            raise SmuError(f"unexpected reply to {d.read}: {reply!r} (expected {d.n_fields} number(s))") from None
        if not math.isfinite(current) or abs(current) >= _OVERFLOW:
            raise SmuError(f"SMU reading overflowed ({reply!r}): the current is outside its range")
        tripped = bool(status >> d.compliance_bit & 1) if d.compliance_bit is not None else False
        if d.trip_query is not None:
            trip = self._query(d.trip_query)
            try:
                tripped = tripped or bool(int(float(trip)))
            except ValueError:
                raise SmuError(f"unexpected reply to {d.trip_query}: {trip!r}") from None
        if tripped:
            raise ComplianceError(
                f"SMU in compliance at {self.voltage_v:g} V: current limit {self.compliance_a:g} A reached "
                f"(read {current:g} A); lower the voltage or raise the compliance"
            )
        return current

    def close(self) -> None:
        """Output off (best effort) and release the VISA session."""
        try:
            if self.output_on:
                self.output(False)
        finally:
            self.resource.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
