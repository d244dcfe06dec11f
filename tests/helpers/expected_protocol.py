"""A fake VISA resource that expects an exact sequence of commands: pins a driver's SCPI, byte for byte.

In the spirit of PyMeasure's `expected_protocol` (our own code): the test lists the (command, reply)
pairs the driver must send, in order; reply None marks a write that gets no answer. Any unexpected,
out-of-order or missing command fails the test with a message naming the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

Step = tuple[str, str | None]  # (command written, reply read back or None)
T = TypeVar("T")


class ProtocolMismatch(AssertionError):
    """The driver did not send what the expected protocol says it should."""


class ExpectedProtocolResource:
    """Stands in for a pyvisa MessageBasedResource; answers queries from the expected steps, in order."""

    def __init__(self, steps: Sequence[Step], resource_name: str = "FAKE::INSTR") -> None:
        self.steps = [(str(cmd), reply) for cmd, reply in steps]
        self.resource_name = resource_name
        self.position = 0  # index of the next expected step
        self.pending: str | None = None  # reply of a written query not yet read
        self.closed = False
        self.failure: ProtocolMismatch | None = None  # first mismatch, kept in case the driver swallows it

    def _fail(self, message: str) -> ProtocolMismatch:
        sent = "\n".join(f"    {i}: {c!r} -> {r!r}" for i, (c, r) in enumerate(self.steps[: self.position]))
        self.failure = ProtocolMismatch(f"{message}\n  steps matched so far:\n{sent or '    (none)'}")
        return self.failure

    def write(self, command: str) -> int:
        """Take one command: it must be the next expected step."""
        if self.closed:
            raise self._fail(f"{command!r} written after close()")
        if self.pending is not None:
            raise self._fail(
                f"{command!r} written while the reply {self.pending!r} of step {self.position - 1} was unread"
            )
        if self.position >= len(self.steps):
            raise self._fail(f"unexpected command {command!r}: all {len(self.steps)} expected steps were already sent")
        expected, reply = self.steps[self.position]
        if command != expected:
            raise self._fail(f"step {self.position}: expected {expected!r}, got {command!r}")
        self.position += 1
        self.pending = reply
        return len(command)

    def read(self) -> str:
        """The reply of the query just written."""
        if self.pending is None:
            last = self.steps[self.position - 1][0] if self.position else None
            raise self._fail(f"read() with no reply due (last command {last!r} expects none)")
        reply, self.pending = self.pending, None
        return reply

    def query(self, command: str) -> str:
        """write + read, like pyvisa's query."""
        self.write(command)
        if self.pending is None:
            raise self._fail(
                f"step {self.position - 1}: {command!r} was queried, but the expected step is a write with no reply"
            )
        return self.read()

    def close(self) -> None:
        self.closed = True

    def assert_done(self) -> None:
        """Fail if a mismatch happened (even one the driver caught) or expected steps were never sent."""
        if self.failure is not None:
            raise self.failure
        if self.pending is not None:
            raise self._fail(f"the reply {self.pending!r} of step {self.position - 1} was never read")
        if self.position < len(self.steps):
            missing = ", ".join(repr(c) for c, _ in self.steps[self.position :])
            raise self._fail(f"{len(self.steps) - self.position} expected command(s) never sent: {missing}")


@contextmanager
def expected_protocol(make: Callable[..., T], steps: Sequence[Step], **kwargs: Any) -> Iterator[T]:
    """`make(resource, **kwargs)` on a resource expecting `steps`; on leaving, every step must have been sent."""
    resource = ExpectedProtocolResource(steps)
    yield make(resource, **kwargs)
    resource.assert_done()
