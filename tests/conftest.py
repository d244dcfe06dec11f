"""Test-wide options and fixtures: `--board-port` runs the board and procedure tests against a real board."""

from __future__ import annotations

import pytest

DEFAULT_BOARD_PORT = "sim://?seed=1&rows=16&cols=16"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--board-port",
        default=None,
        help="board URL for the tests marked `board` (default: the simulated board " + DEFAULT_BOARD_PORT + ")",
    )


@pytest.fixture(scope="session")
def board_port(request: pytest.FixtureRequest) -> str:
    """URL of the board under test: a real board's serial port with --board-port, else the simulator."""
    return request.config.getoption("--board-port") or DEFAULT_BOARD_PORT


@pytest.fixture(scope="session")
def real_board(request: pytest.FixtureRequest) -> bool:
    """True when the run targets a real board (tests that need the simulator's ground truth skip then)."""
    return request.config.getoption("--board-port") is not None
