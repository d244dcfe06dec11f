"""Ctrl-C and SIGTERM as a clean stop: an interrupt raised at once, and a flag for the moments Python cannot raise it."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

STOP = threading.Event()  # Ctrl-C or SIGTERM arrived: long work stops at its next step at the latest
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals() -> dict[int, Any]:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt at once and set `STOP`; returns the previous handlers.

    An interrupt raised while Python runs a garbage-collection callback or ``__del__`` is lost there, so loops
    that must stop also check `STOP` (a run after every record, a simulated board between frames). Python would
    print such a lost interrupt as "Exception ignored" with a traceback; `_quiet_lost_interrupts` keeps it off
    the user's screen.
    """

    def stop(*_: object) -> None:
        STOP.set()
        raise KeyboardInterrupt

    STOP.clear()
    sys.unraisablehook = _quiet_lost_interrupts
    return {s: signal.signal(s, stop) for s in STOP_SIGNALS}


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers `stop_on_signals` replaced."""
    for s, handler in previous.items():
        signal.signal(s, handler)


def _quiet_lost_interrupts(unraisable: Any) -> None:
    """Drop an interrupt that Python could not raise (inside a callback) once `STOP` carries it; report the rest."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and STOP.is_set():
        return
    sys.__unraisablehook__(unraisable)
