"""Test-wide options and fixtures: `--board-port` runs the board and procedure tests against a real board.

Simulated chips persist between opens (sim_backend/SIM.md); every test gets its own empty chip folder
(`RRAM_SIM_STATE_DIR`, inherited by the subprocesses it starts), so each `sim://` URL opens a pristine
chip in a new test and the user's own stored chips are never touched. Within one test a chip persists:
a test that needs a fresh copy of a chip it already used opens it with `persist=0`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DEFAULT_BOARD_PORT = "sim://?seed=1&rows=16&cols=16"
SIM_STATE_ENV = "RRAM_SIM_STATE_DIR"  # sim_backend.chip_store.STATE_DIR_ENV (not imported: conftest stays light)
_SESSION_STATE = tempfile.TemporaryDirectory(prefix="rram-sim-state-")


def pytest_configure(config: pytest.Config) -> None:
    """Module- and session-scoped fixtures that open sim:// chips (before any test's folder exists) store them here."""
    os.environ[SIM_STATE_ENV] = _SESSION_STATE.name


@pytest.fixture(autouse=True)
def sim_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty folder of stored simulated chips for every test."""
    folder = tmp_path_factory.mktemp("sim-state")
    monkeypatch.setenv(SIM_STATE_ENV, str(folder))
    yield folder


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--board-port",
        default=None,
        help="board URL for the tests marked `board` (default: the simulated board " + DEFAULT_BOARD_PORT + ")",
    )


FIRMWARES = ("python", "c")  # the board firmwares a conformance test runs against (sim_backend/c_firmware.py)


@pytest.fixture(scope="module", params=["python"])
def firmware(request: pytest.FixtureRequest) -> Iterator[str]:
    """The simulated board's firmware: "python" unless a test parametrizes it with FIRMWARES (indirect=True).

    "c" is skipped with the reason when the C firmware cannot be built here (no compiler). While the fixture
    is active, `tests.helpers.boards.new_engine` makes engines of this firmware.
    """
    from tests.helpers import boards

    name = str(request.param)
    if name == "c":
        from sim_backend.c_firmware import c_firmware_available

        why = c_firmware_available()
        if why is not None:
            pytest.skip(f"C firmware: {why}")
    previous = boards.set_firmware(name)
    yield name
    boards.set_firmware(previous)


@pytest.fixture(scope="session")
def board_port(request: pytest.FixtureRequest) -> str:
    """URL of the board under test: a real board's serial port with --board-port, else the simulator."""
    return request.config.getoption("--board-port") or DEFAULT_BOARD_PORT


@pytest.fixture(scope="session")
def real_board(request: pytest.FixtureRequest) -> bool:
    """True when the run targets a real board (tests that need the simulator's ground truth skip then)."""
    return request.config.getoption("--board-port") is not None
