"""Shared test helpers: simulated boards, the in-process CLI runner, protocol strategies, instrument fakes."""
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"  # fixture files kept with the tests
