"""The pulse ledger: every pulse the board applied during a run is in the run file, across resets and kills.

A record of a table accounts for the pulses of the step that produced it. When a board reset (or a killed
host) interrupts a step, the board may already have pulsed cells for a record that never reached the file,
and the step is then done again. The ledger closes that gap with the board's lifetime counters (capability
LIFETIME_COUNTERS, PROTOCOL.md 6.3): it notes the counters after every record, and when the run carries on
after an interruption it writes the difference, the pulses no record holds, as one row of its own table.
A streamed step (ENDURANCE) writes many records per request and runs ahead of them; it is marked once when it
starts, with what each of its records accounts for, and reconciled when it ends or was cut.
So `sum(records' pulses) + sum(ledger rows)` is what the chip got. RUNFILE.md section 4a documents the table.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from firmware_protocol import Capability
from firmware_protocol import messages as m
from hil.characterize.runfile import RunWriter, Table
from hil.hardware.board import Board

log = logging.getLogger(__name__)

LEDGER_TABLE = "unrecorded_pulses"
_KINDS = ("form", "set", "reset", "reads")
LEDGER = Table(
    {
        "table": ("S32", ()),
        "after": ("i8", ()),
        "form": ("i8", ()),
        "set": ("i8", ()),
        "reset": ("i8", ()),
        "reads": ("i8", ()),
        "t": ("f8", ()),
        "cause": ("u1", ()),
    },
    "operations the board applied that no record holds; the gap lies after the first `after` records of `table` "
    "(-1: not known, the board keeps no lifetime counters)",
)
# Resume state: the counters at the last mark, which table and how many of its records they follow.
LEDGER_STATE = (
    "ledger_armed",
    "ledger_stream",
    "ledger_table",
    "ledger_records",
    "ledger_total",
    *(f"ledger_{k}" for k in _KINDS),
    *(f"ledger_per_record_{k}" for k in _KINDS),
)


class Cause(enum.IntEnum):
    """Why pulses were left without a record (the ledger row's `cause`)."""

    BOARD_RESET = 0  # the board rebooted during a step
    INTERRUPTED = 1  # the host stopped (Ctrl-C, kill, lost link) and the run was resumed
    STREAM_TAIL = 2  # cycles a stream ran after its last read point


@dataclass(frozen=True)
class Counts:
    """Operations by kind (FORM pulses, SET pulses, RESET pulses, cell reads)."""

    form: int = 0
    set: int = 0
    reset: int = 0
    reads: int = 0

    @classmethod
    def of(cls, c: m.Counters) -> Counts:
        return cls(int(c.form_pulses), int(c.set_pulses), int(c.reset_pulses), int(c.reads))

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, k) + getattr(other, k) for k in _KINDS))

    def __sub__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, k) - getattr(other, k) for k in _KINDS))

    def __mul__(self, n: int) -> Counts:
        return Counts(*(getattr(self, k) * n for k in _KINDS))

    def __bool__(self) -> bool:
        return any(getattr(self, k) for k in _KINDS)


UNKNOWN = Counts(-1, -1, -1, -1)


class PulseLedger:
    """Notes the board's counters after each record of `w` and books what an interruption left unrecorded."""

    def __init__(self, board: Board, w: RunWriter, tables: list[str]) -> None:
        self.board = board
        self.w = w
        self.tables = sorted(t for t in tables if t != LEDGER_TABLE)
        # A run file from before the ledger (resumed) has no ledger table: it is carried on without one.
        self.enabled = LEDGER_TABLE in tables
        self.measured = self.enabled and bool(board.capabilities & Capability.LIFETIME_COUNTERS)
        self._streaming = False

    def rows(self) -> np.ndarray | None:
        """The ledger's rows so far (None for a run file without a ledger)."""
        return self.w.read(LEDGER_TABLE) if self.enabled else None

    # ------------------------------------------------------------------ state in the run file
    def _get(self, key: str) -> float:
        return self.w.state(f"ledger_{key}")

    def _total(self) -> int:
        return sum(self.w.count(t) for t in self.tables)

    def _table_name(self) -> str:
        i = int(self._get("table"))
        return self.tables[i] if 0 <= i < len(self.tables) else ""

    def _mark(self, table: str, per_record: Counts | None = None) -> None:
        """Note the counters now, as following the records of `table` written so far ("": no record yet)."""
        if not self.measured:
            return
        now = Counts.of(self.board.counters())
        per = per_record or Counts()
        self.w.set_state(
            ledger_armed=1,
            ledger_stream=int(per_record is not None),
            ledger_table=self.tables.index(table) if table in self.tables else -1,
            ledger_records=self.w.count(table) if table in self.tables else 0,
            ledger_total=self._total(),
            **{f"ledger_{k}": getattr(now, k) for k in _KINDS},
            **{f"ledger_per_record_{k}": getattr(per, k) for k in _KINDS},
        )

    # ------------------------------------------------------------------ hooks
    def start(self) -> None:
        """A new run: note the counters before the first pulse."""
        if self.measured:
            self._mark("")

    def after_append(self, table: str) -> None:
        """A record of `table` reached the file: the pulses so far are accounted for (not inside a stream)."""
        if not self._streaming and table != LEDGER_TABLE:
            self._mark(table)

    def reconcile(self, cause: Cause) -> Counts:
        """Book what the board applied since the last mark that no record holds; returns it (UNKNOWN if the
        board keeps no lifetime counters)."""
        if not self.enabled:
            return UNKNOWN
        if not self.measured:
            self._book("", UNKNOWN, cause)
            log.warning(
                "this board keeps no lifetime counters: what the step interrupted by the %s applied is not known "
                "(the run file marks the gap in %r)",
                "board reset" if cause == Cause.BOARD_RESET else "interruption",
                LEDGER_TABLE,
            )
            return UNKNOWN
        if not self._get("armed"):
            # Never noted: a run stopped before its first note applied nothing, but a file from before the ledger
            # (format 1.0, resumed) may have lost pulses nobody counted.
            lost = UNKNOWN if cause == Cause.INTERRUPTED and self._total() else Counts()
            if lost:
                self._book("", lost, cause)
            self._mark("")
            return lost
        table = self._table_name()
        now = Counts.of(self.board.counters())
        snap = Counts(*(int(self._get(k)) for k in _KINDS))
        if self._get("stream"):
            per = Counts(*(int(self._get(f"per_record_{k}")) for k in _KINDS))
            received = self.w.count(table) - int(self._get("records")) if table else 0
            lost = (now - snap) - per * received
        elif self._total() != int(self._get("total")):
            lost = Counts()  # the step's record made it to the file before the mark did: nothing is missing
        else:
            lost = now - snap
        if lost:
            self._book(table, lost, cause)
        self._mark(table)
        return lost

    @contextmanager
    def stream(self, table: str, per_record: Counts, tail: Counts) -> Iterator[None]:
        """A streamed step writing records of `table`, each accounting for `per_record`. On a normal end what the
        stream ran after its last record is booked (STREAM_TAIL): measured, or else `tail`, what the request
        says a complete stream runs after its last read point. On an error the mark stays for `reconcile`."""
        self._mark(table, per_record)
        self._streaming = True
        try:
            yield
        finally:
            self._streaming = False
        if self.measured:
            self.reconcile(Cause.STREAM_TAIL)
        elif tail and self.enabled:
            self._book(table, tail, Cause.STREAM_TAIL)

    def _book(self, table: str, lost: Counts, cause: Cause) -> None:
        t = self.board.heartbeat().timestamp_us / 1e6
        self.w.append(
            LEDGER_TABLE,
            table=table.encode(),
            after=self.w.count(table) if table in self.tables else 0,
            t=t,
            cause=int(cause),
            **{k: getattr(lost, k) for k in _KINDS},
        )
        self.w.flush()
        if cause != Cause.STREAM_TAIL and lost != UNKNOWN:
            log.warning(
                "the board applied %d SET, %d RESET and %d FORM pulses that no record holds; the run file books them "
                "in %r",
                lost.set,
                lost.reset,
                lost.form,
                LEDGER_TABLE,
            )


def unrecorded(rows: np.ndarray | None, table: str, after: int | None = None) -> Counts:
    """Sum of the ledger `rows` for `table` (only the gaps after its first `after` records, if given); -1 entries
    (not known) count as 0."""
    if rows is None or not len(rows):
        return Counts()
    sel = rows["table"] == table.encode()
    if after is not None:
        sel &= rows["after"] == after
    return Counts(*(int(np.maximum(rows[k][sel], 0).sum()) for k in _KINDS))
