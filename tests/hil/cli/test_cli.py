"""Bad input to `rram characterize`: every case is a one-line error (exit code != 0, no traceback) that
changes nothing: no run file appears, an existing one keeps its bytes, the board gets no pulse."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from firmware_protocol import PROTOCOL_MAJOR
from firmware_protocol import messages as m
from hil.characterize import get_procedure
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import read_run
from sim_backend.board_config import BoardConfig
from sim_backend.firmware import FirmwareEngine
from tests.helpers.boards import PtySim
from tests.helpers.cli import assert_one_line_error, rram

SIM = "sim://?seed=1&rows=16&cols=16"


@pytest.fixture
def pty_sim() -> Iterator[PtySim]:
    sim = PtySim(FirmwareEngine(BoardConfig(rows=16, cols=16, seed=1)))
    yield sim
    sim.close()


def _counts(engine: FirmwareEngine) -> tuple[int, int, int, int]:
    c = engine.counters
    return c.form, c.set, c.reset, c.reads


# ------------------------------------------------------------------------------------------- ports
def test_unknown_port_is_a_one_line_error(capsys, monkeypatch, tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    r = rram(capsys, monkeypatch, "characterize", "form", "--port", str(tmp_path / "ttyNOPE"), "-o", str(out))
    assert_one_line_error(r, "cannot open port", "ttyNOPE")
    assert not out.exists()
    r = rram(capsys, monkeypatch, "characterize", "form", "--port", "sim://?seed=1&rows=16&colz=16", "-o", str(out))
    assert_one_line_error(r, "unknown sim:// option 'colz'")
    assert not out.exists()


class _FutureFirmware(FirmwareEngine):
    """Firmware of a future board speaking the next protocol major version."""

    @property
    def hello_info(self) -> m.HelloInfo:
        return dataclasses.replace(super().hello_info, proto_major=PROTOCOL_MAJOR + 1, proto_minor=0)


def test_board_with_another_protocol_version_is_refused(capsys, monkeypatch, tmp_path: Path) -> None:
    sim = PtySim(_FutureFirmware(BoardConfig(rows=16, cols=16, seed=1)))
    try:
        out = tmp_path / "run.h5"
        r = rram(capsys, monkeypatch, "characterize", "form", "--port", sim.path, "-o", str(out), "--cells", "0:2,0:2")
        assert_one_line_error(r, f"speaks protocol {PROTOCOL_MAJOR + 1}.0", "major versions must match")
        assert not out.exists()
        assert _counts(sim.engine) == (0, 0, 0, 0)
    finally:
        sim.close()


# ------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "args, fragments",
    [
        (["form", "--cells", "0:20,0:4"], ["rows 0:20 are outside the array (0:16)"]),
        (["form", "--cells", "3,16"], ["columns 16:17 are outside the array"]),
        (["form", "--cells", "a:b,0:4"], ["row part 'a:b' is not N or N:M"]),
        (["form", "--v-stop", "6.0"], ["FORM stop voltage 6.000 V is outside the board's range"]),
        (["form", "--v-gate", "3.6"], ["gate voltage 3.600 V"]),
        (["form", "--width-ns", "1005"], ["not a multiple of the 10 ns step"]),
        (["endurance", "--set-v", "3.5"], ["SET voltage 3.500 V is outside"]),
        (["endurance", "--reset-v", "-3.3"], ["RESET voltage -3.300 V is outside"]),
        (["endurance", "--read-every", "0"], ["1 <= read_every <= cycles"]),
        (["iv", "--v-max", "3.2"], ["sweep maximum 3.200 V"]),
        (["levels", "--gate-hi", "3.5"], ["gate voltage 3.500 V"]),
        (["levels", "--read-times", "10,1"], ["times must be positive and increasing"]),
        (["retention", "--v-read", "0.5"], ["read voltage 0.500 V is outside"]),
        (["read-noise", "--tol", "0"], ["--tol > 0"]),
        (["read-noise", "--reads", "2"], ["--reads >= 3"]),
    ],
)
def test_bad_parameters_are_refused_before_any_pulse_or_file(
    capsys, monkeypatch, tmp_path: Path, pty_sim: PtySim, args: list[str], fragments: list[str]
) -> None:
    out = tmp_path / "run.h5"
    cmd = ["characterize", args[0], "--port", pty_sim.path, "-o", str(out), "-q", *args[1:]]
    if "--cells" not in args:
        cmd += ["--cells", "0:2,0:2"]
    before = _counts(pty_sim.engine)
    r = rram(capsys, monkeypatch, *cmd)
    assert_one_line_error(r, *fragments)
    assert not out.exists() and not list(tmp_path.iterdir())
    assert _counts(pty_sim.engine) == before


# ------------------------------------------------------------------------------------------- run files
@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    """A small complete form run."""
    from hil.hardware.board import Board

    out = tmp_path / "done.h5"
    with Board.open(SIM) as board:
        cls = get_procedure("form")
        run_procedure(cls(cls.Params(cells="0:1,0:2"), board), out, quiet=True)
    return out


def test_existing_output_file_is_not_overwritten(capsys, monkeypatch, finished_run: Path) -> None:
    raw = finished_run.read_bytes()
    r = rram(capsys, monkeypatch, "characterize", "form", "--port", SIM, "-o", str(finished_run), "--cells", "0:1,0:2")
    assert_one_line_error(r, "already exists", "--force", "--resume")
    assert finished_run.read_bytes() == raw
    r = rram(
        capsys,
        monkeypatch,
        "characterize",
        "form",
        "--port",
        SIM,
        "-o",
        str(finished_run),
        "--cells",
        "0:1,0:2",
        "--resume",
    )
    assert_one_line_error(r, "already complete")
    assert finished_run.read_bytes() == raw
    r = rram(capsys, monkeypatch, "characterize", "iv", "--port", SIM, "-o", str(finished_run), "--resume")
    assert_one_line_error(r, "already complete")
    r = rram(capsys, monkeypatch, "characterize", "form", "--port", SIM, "-o", str(finished_run), "--resume", "--force")
    assert_one_line_error(r, "exclude each other")
    assert finished_run.read_bytes() == raw


@pytest.fixture
def interrupted_run(tmp_path: Path) -> Path:
    """A form run over 0:1,0:4 that stopped (process gone) after two of its four cells."""
    from hil.hardware.board import Board
    from tests.helpers.runs import form_run_stopped_after

    with Board.open(SIM) as board:
        return form_run_stopped_after(board, tmp_path / "done.h5", "0:1,0:4", 2)


@pytest.mark.parametrize("damage", ["truncated", "truncated-end", "garbage", "not-hdf5", "other-hdf5", "empty"])
def test_corrupt_run_file_cannot_be_resumed_and_is_left_alone(
    capsys, monkeypatch, tmp_path: Path, interrupted_run: Path, damage: str
) -> None:
    bad = tmp_path / "bad.h5"
    good = interrupted_run.read_bytes()
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "truncated-end":
        bad.write_bytes(good[:-100])
    elif damage == "garbage":  # the superblock overwritten
        bad.write_bytes(good[:8] + bytes(range(256)) * 4 + good[8 + 1024 :])
    elif damage == "not-hdf5":
        bad.write_text("cell,g\n0,1e-5\n")
    elif damage == "other-hdf5":
        with h5py.File(bad, "w") as f:
            f["x"] = np.arange(3)
    else:
        bad.write_bytes(b"")
    raw = bad.read_bytes()
    r = rram(
        capsys, monkeypatch, "characterize", "form", "--port", SIM, "-o", str(bad), "--cells", "0:1,0:4", "--resume"
    )
    assert_one_line_error(r, str(bad))
    assert bad.read_bytes() == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bad.h5", "done.h5"])  # no temporary left behind


def test_interrupted_run_resumes_to_the_full_region(capsys, monkeypatch, interrupted_run: Path) -> None:
    r = rram(
        capsys,
        monkeypatch,
        "characterize",
        "form",
        "--port",
        SIM,
        "-o",
        str(interrupted_run),
        "--cells",
        "0:1,0:4",
        "--resume",
        "-q",
    )
    assert r.code == 0, r.text
    rd = read_run(interrupted_run)
    assert rd.complete and np.array_equal(rd.data["form"]["cell"][:, 1], [0, 1, 2, 3])


def test_resume_of_a_missing_file_is_a_one_line_error(capsys, monkeypatch, tmp_path: Path) -> None:
    out = tmp_path / "missing.h5"
    r = rram(capsys, monkeypatch, "characterize", "form", "--port", SIM, "-o", str(out), "--resume")
    assert_one_line_error(r, "does not exist")
    assert not out.exists()


def test_good_run_through_the_entry_point_prints_the_summary(capsys, monkeypatch, tmp_path: Path) -> None:
    out = tmp_path / "ok.h5"
    r = rram(
        capsys, monkeypatch, "characterize", "form", "--port", SIM, "-o", str(out), "--cells", "0:1,0:3", "-q", "--json"
    )
    assert r.code == 0, r.text
    import json

    summary = json.loads(r.out)
    assert summary["procedure"] == "form" and summary["cells"] == 3 and summary["formed"] + summary["failed"] == 3


def test_run_through_a_board_reset_completes_and_reports_it(capsys, monkeypatch, tmp_path: Path) -> None:
    import json

    formed = rram(
        capsys,
        monkeypatch,
        "characterize",
        "form",
        "--port",
        SIM,
        "-o",
        str(tmp_path / "f.h5"),
        "--cells",
        "0:4,0:4",
        "-q",
    )
    assert formed.code == 0, formed.text  # the chip keeps its formed cells for the next command
    out = tmp_path / "rn.h5"
    port = SIM + "&reset_after=500"  # the firmware reboots once, after 500 bytes from the host
    r = rram(
        capsys,
        monkeypatch,
        "characterize",
        "read-noise",
        "--port",
        port,
        "-o",
        str(out),
        "--cells",
        "0:4,0:4",
        "--reads",
        "40",
        "-q",
        "--json",
    )
    assert r.code == 0, r.text
    summary = json.loads(r.out)
    assert summary["board_resets"] == 1 and summary["reads"] == 40 and summary["cells"] == 16
    rd = read_run(out)
    assert rd.complete and len(rd.data["program"]) == 16 and len(rd.data["reads"]) == 40


def test_a_board_that_vanishes_mid_run_is_one_line_and_the_run_resumes(capsys, monkeypatch, tmp_path: Path) -> None:
    """Issue 15 item 7: the cable is pulled during a run; one line says the data are kept and how to go on."""
    from tests.helpers.boards import form_region

    engine = FirmwareEngine(BoardConfig(rows=8, cols=8, seed=2))
    form_region(engine, "0:4,0:4")
    read_current, calls = engine.array.read_current, {"n": 0}
    sim = PtySim(engine)

    def unplugged_later(*a, **kw):  # the 40th block read after the formed check's 128
        calls["n"] += 1
        if calls["n"] == 128 + 40:
            sim.server.unplug()
        return read_current(*a, **kw)

    engine.array.read_current = unplugged_later  # type: ignore[method-assign]
    out = tmp_path / "run.h5"
    args = ["characterize", "read-noise", "--cells", "0:4,0:4", "--reads", "200", "--no-program", "-q", "-o", str(out)]
    try:
        r = rram(capsys, monkeypatch, *args, "--port", sim.path, "--flush-s", "0")
    finally:
        sim.close()
    assert_one_line_error(
        r,
        f"board on {sim.path} stopped answering: the link was closed",
        f"data up to the last flush are in {out}; continue with --resume",
    )
    kept = len(read_run(out).data["reads"])
    assert 0 < kept < 200
    engine.array.read_current = read_current  # type: ignore[method-assign]
    sim = PtySim(engine)  # the board is plugged in again
    try:
        r = rram(capsys, monkeypatch, *args, "--port", sim.path, "--resume")
    finally:
        sim.close()
    assert r.code == 0, r.text
    run = read_run(out)
    assert run.complete and len(run.data["reads"]) == 200
