"""Progress of long work: a tqdm bar with rate and ETA on a terminal, plain lines everywhere else.

One class for every layer (training, Monte Carlo, characterization procedures, deployment), so it
lives in the base layer and imports nothing of ours; tqdm is imported only when a terminal shows a bar.
A pipe, a log file or CI gets no carriage returns: plain lines on the same stream (stderr by default),
one per stage, progress lines at most one per ``min_interval_s`` seconds, and a final line.

Two plain-line styles:

- periodic (default): "DESC: 3/10 batch, 61.0 s, about 142.3 s left" whenever ``min_interval_s``
  (default 60 s) has passed since the previous line, and "DESC: 10/10 batch in 203.3 s" at the end;
- ``tenths=True`` (long procedures): "DESC: start, 50 op", then a line at each further tenth of the
  work "DESC: 30% (15/50 op), 3.1 s, about 7.2 s left" (none sooner than ``min_interval_s``, default
  1 s, after the previous line, so a short run prints its start and end only), and at the end
  "DESC: done, 50/50 op in 10.3 s" or, when the work stopped short, "DESC: stopped, 5/10 op in ...".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

PERIODIC_INTERVAL_S = 60.0  # periodic style: at most a line a minute in a log
TENTHS_INTERVAL_S = 1.0  # tenths style: a tenth reached sooner than this after the previous line is not printed
STEPS = 10  # tenths style: a line each time another tenth of the work is done


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal (a closed or foreign stream is not)."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _seconds(t: float) -> str:
    return f"{t:.1f} s" if t < 100 else f"{t / 60:.1f} min"


class Progress:
    """One stage of work of ``total`` units (None: unknown), shown as a bar on a terminal, as lines elsewhere.

    ``enabled=False`` prints nothing at all; ``final_line=False`` leaves the plain-line mode silent at the
    end (for loops whose caller prints its own line per stage, like the training epochs). Count work with
    `advance`, or `set` the count already done on a resumed run (it prints no line and is left out of the
    rate behind the ETA). As a context manager it closes at the end, without a final line after a failure.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        enabled: bool = True,
        tenths: bool = False,
        min_interval_s: float | None = None,
        final_line: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.total = None if total is None else max(0, int(total))
        self.desc, self.unit = desc, unit
        self.enabled, self.tenths, self.final_line = enabled, tenths, final_line
        default = TENTHS_INTERVAL_S if tenths else PERIODIC_INTERVAL_S
        self.min_interval_s = default if min_interval_s is None else min_interval_s
        self.stream = stream
        self.n = self._n0 = 0
        self._t0 = self._last = time.monotonic()
        self._next = 1  # tenths style: the next tenth to announce
        self._bar: Any = None
        self._closed = False
        if enabled and is_terminal(self._out):
            from tqdm import tqdm  # lazily: only a terminal shows a bar

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self._out)
        elif enabled and tenths:
            self._line("start" if self.total is None else f"start, {self.total} {unit}")

    @property
    def _out(self) -> TextIO:
        return sys.stderr if self.stream is None else self.stream

    @property
    def bar(self) -> bool:
        """True when a terminal bar is shown."""
        return self._bar is not None

    @property
    def _lines(self) -> bool:
        return self.enabled and self._bar is None

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done; in plain-line mode print a progress line when one is due."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and self._due():
            elapsed = time.monotonic() - self._t0
            head = self._count()
            if self.total is not None:
                if self.tenths:
                    head = f"{100 * self.n // self.total}% ({head})"
                left = elapsed * (self.total - self.n) / max(1, self.n - self._n0)
                self._line(f"{head}, {_seconds(elapsed)}, about {_seconds(left)} left")
            else:
                self._line(f"{head}, {_seconds(elapsed)}")

    def set(self, n: int) -> None:
        """Work already done (a resume): counted without a line of its own, so the next line is the next due."""
        self.n = self._n0 = n
        if self._bar is not None:
            self._bar.n = self._bar.last_print_n = n  # not a burst in the bar's rate
            self._bar.refresh()
        while self.total and STEPS * n >= self._next * self.total:
            self._next += 1

    def stage(self, text: str) -> None:
        """Announce a step of this stage: on a terminal in the bar's description, elsewhere as a line."""
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc}: {text}")
        elif self._lines:
            self._line(text)

    def close(self) -> None:
        """End the stage: clear the bar, or print the final line (once; closing again prints nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._lines and self.final_line:
            took = f"{self._count()} in {_seconds(time.monotonic() - self._t0)}"
            if self.tenths:
                took = f"{'stopped' if self.total is not None and self.n < self.total else 'done'}, {took}"
            self._line(took)

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        """Iterate ``items``, counting one unit per item, and close at the end."""
        try:
            for item in items:
                yield item
                self.advance()
        finally:
            self.close()

    def _due(self) -> bool:
        """A progress line is due: the work is not finished (the final line says that), another tenth is
        reached (tenths style), and the previous line is at least ``min_interval_s`` old."""
        if self.total is not None and self.n >= self.total:
            return False
        if self.tenths:
            if not self.total or STEPS * self.n < self._next * self.total:
                return False
            while STEPS * self.n >= self._next * self.total:
                self._next += 1
        return time.monotonic() - self._last >= self.min_interval_s

    def _count(self) -> str:
        return f"{self.n} {self.unit}" if self.total is None else f"{self.n}/{self.total} {self.unit}"

    def _line(self, text: str) -> None:
        self._last = time.monotonic()
        print(f"{self.desc}: {text}", file=self._out, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # no final line for a stage that failed
            self._closed = True
            if self._bar is not None:
                self._bar.close()
