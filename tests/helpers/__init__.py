"""Shared test helpers: simulated boards, the in-process CLI runner, protocol strategies, instrument fakes."""
