"""Progress of long loops: a tqdm bar with rate and ETA on a terminal, plain lines everywhere else.

A pipe, a log file or CI gets no carriage returns: instead of a bar, one plain line per stage (on
stderr, like the bar), and for a long stage at most one line per ``every_s`` seconds in between.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


class Progress:
    """One stage of work: a bar on a terminal; elsewhere a final line "DESC: N UNIT in T s" (and periodic ones).

    ``enabled=False`` prints nothing at all; ``final_line=False`` leaves the plain-line mode silent at the
    end (for loops whose caller prints its own line per stage, like the training epochs).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        enabled: bool = True,
        final_line: bool = True,
        every_s: float = 60.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled, self.final_line, self.every_s = enabled, final_line, every_s
        self.stream = stream
        self.n = 0
        self._t0 = self._last = time.monotonic()
        self._bar: Any = None
        self._closed = False
        if enabled and is_terminal(self._out):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self._out)

    @property
    def _out(self) -> TextIO:
        return sys.stderr if self.stream is None else self.stream

    @property
    def bar(self) -> bool:
        """True when a terminal bar is shown."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every_s and (self.total is None or self.n < self.total):
            self._last = now
            self._line(f"{self._count()} {self.unit}, {now - self._t0:.0f} s")

    def stage(self, text: str) -> None:
        """Announce a step of this stage: on a terminal in the bar's description, elsewhere as a line."""
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc}: {text}")
        elif self.enabled:
            self._line(text)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.final_line:
            self._line(f"{self._count()} {self.unit} in {time.monotonic() - self._t0:.1f} s")

    def _count(self) -> str:
        return f"{self.n}/{self.total}" if self.total is not None else str(self.n)

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self._out, flush=True)

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        """Iterate ``items``, counting one unit per item, and close at the end."""
        try:
            for item in items:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # no "done" line for a stage that failed
            self._closed = True
            if self._bar is not None:
                self._bar.close()
