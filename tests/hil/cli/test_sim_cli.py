"""`rram sim status|list|reset` and `rram sim serve` on stored chips; a chip formed by one command stays formed
for the next."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hil.hardware.board import Board
from sim_backend.board_config import BoardConfig
from sim_backend.chip_store import ChipId, ChipStore
from tests.helpers.cli import assert_one_line_error, rram

REPO = Path(__file__).resolve().parents[3]
URL = "sim://?seed=3&rows=8&cols=8"
CHIP = ChipId.of(BoardConfig(rows=8, cols=8, seed=3))


def form_cells(url: str = URL, n: int = 8) -> int:
    with Board.open(url) as board:
        return sum(board.form(0, c, v_gate=1.0).formed for c in range(n))


def table(text: str) -> dict[str, str]:
    """`name  value` lines: names and values, checking that every value starts in the same column."""
    lines = [line for line in text.splitlines() if line.strip()]
    starts = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in lines}
    assert len(starts) == 1, text
    return {line.split("  ", 1)[0].strip(): line.split("  ", 1)[1].strip() for line in lines}


def test_status_of_a_pristine_then_a_formed_chip(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    r = rram(capsys, monkeypatch, "sim", "status", CHIP.name)
    assert r.code == 0, r.text
    rows = table(r.out)
    assert rows["state"] == "pristine (nothing stored yet)" and rows["last saved"] == "never"
    assert rows["formed"] == "0 of 64 cells (0.0 %)" and rows["lock"] == "free"
    formed = form_cells()
    r = rram(capsys, monkeypatch, "sim", "status", "--seed", "3", "--rows", "8", "--cols", "8")
    rows = table(r.out)
    assert rows["state"] == "stored" and rows["file"] == str(ChipStore().path(CHIP))
    assert rows["formed"] == f"{formed} of 64 cells ({100 * formed / 64:.1f} %)"
    assert rows["virtual clock"].endswith(" s") and float(rows["virtual clock"][:-2]) > 0
    data = json.loads(rram(capsys, monkeypatch, "sim", "status", URL, "--json").out)
    assert data["formed"] == formed and data["cells"] == 64 and data["stored"] and not data["locked"]
    assert data["counters"]["form"] >= formed and data["clock_s"] == pytest.approx(float(rows["virtual clock"][:-2]))
    assert data["file"] == rows["file"] and data["current_physics"]


def test_status_names_the_holder(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os

    with Board.open(URL):
        rows = table(rram(capsys, monkeypatch, "sim", "status", URL).out)
        assert rows["lock"] == f"held by process {os.getpid()}"
        data = json.loads(rram(capsys, monkeypatch, "sim", "status", URL, "--json").out)
        assert data["locked"] and data["lock_pid"] == os.getpid()


def test_list_shows_every_stored_chip_in_aligned_columns(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    r = rram(capsys, monkeypatch, "sim", "list")
    assert r.code == 0 and r.out.startswith("no stored chips in ")
    form_cells()
    form_cells("sim://?seed=12&rows=4&cols=16", n=4)
    r = rram(capsys, monkeypatch, "sim", "list")
    lines = r.out.splitlines()
    assert lines[0] == f"stored chips in {ChipStore().folder}"
    header, *chips = lines[1:]
    assert [c.split()[0] for c in chips] == ["seed12_4x16", "seed3_8x8"]
    for name in ("formed", "clock (s)", "saved", "lock", "physics"):
        column = header.index(name)
        assert all(c[column - 1] == " " for c in chips), (name, r.out)  # every column starts after a blank
    assert "current" in chips[0] and "free" in chips[0]
    data = json.loads(rram(capsys, monkeypatch, "sim", "list", "--json").out)
    assert [c["chip"] for c in data["chips"]] == ["seed12_4x16", "seed3_8x8"] and data["unreadable"] == []


def test_reset_gives_a_pristine_chip_and_is_refused_while_open(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert form_cells() > 0
    with Board.open(URL):
        r = rram(capsys, monkeypatch, "sim", "reset", CHIP.name)
        assert_one_line_error(r, f"simulated chip {CHIP.name} is already open in this process", "to reset it")
    assert ChipStore().path(CHIP).exists()
    r = rram(capsys, monkeypatch, "sim", "reset", URL)
    assert r.code == 0 and f"deleted {ChipStore().path(CHIP)}" in r.out and "pristine" in r.out
    assert not ChipStore().path(CHIP).exists() and not ChipStore().lock_path(CHIP).exists()
    with Board.open(URL) as board:
        assert not board.link.engine.array.formed.any()  # type: ignore[attr-defined]
        assert board.counters().form_pulses == 0
    r = rram(capsys, monkeypatch, "sim", "reset", CHIP.name)
    assert r.code == 0 and "already pristine" in r.out
    with Board.open(URL):  # open but not saved yet: still refused (its holder saves when it closes)
        assert_one_line_error(rram(capsys, monkeypatch, "sim", "reset", CHIP.name), "already open in this process")
        assert_one_line_error(rram(capsys, monkeypatch, "sim", "reset", "--all"), "already open in this process")


def test_reset_all(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    form_cells()
    form_cells("sim://?seed=12&rows=4&cols=16", n=4)
    data = json.loads(rram(capsys, monkeypatch, "sim", "reset", "--all", "--json").out)
    assert len(data["deleted"]) == 2 and ChipStore().files() == []
    assert_one_line_error(rram(capsys, monkeypatch, "sim", "reset", CHIP.name, "--all"), "not both")


@pytest.mark.parametrize(
    "args, message",
    [
        (["status", "chip7"], "'chip7' is not a chip: give a name like seed0_64x64"),
        (["status", CHIP.name, "--seed", "2"], "either as CHIP or with --seed/--rows/--cols"),
        (["status", "sim://?seed=1&persist=2"], "persist='2' is not 0 or 1"),
        (["reset", "sim://?seed=1&state_dir=/a", "--state-dir", "/b"], "give the folder once"),
    ],
)
def test_bad_chip_arguments_are_one_line_errors(capsys, monkeypatch, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    assert_one_line_error(rram(capsys, monkeypatch, "sim", *args), message)


def test_status_finds_a_chip_by_its_spatial_field(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--spatial names the chip with that gain field, the one a sim:// URL with spatial= opened; without it, another."""
    formed = form_cells(f"{URL}&spatial=0.05&spatial_len=4")
    named = ["sim", "status", "--seed", "3", "--rows", "8", "--cols", "8"]
    rows = table(rram(capsys, monkeypatch, *named, "--spatial", "0.05", "--spatial-len", "4").out)
    assert rows["state"] == "stored" and rows["formed"].startswith(f"{formed} of 64 cells") and formed > 0
    assert rows["spatial field"] == "sd 0.05 of ln g, correlation length 4 cells"
    assert table(rram(capsys, monkeypatch, "sim", "status", f"{URL}&spatial=0.05&spatial_len=4").out) == rows
    plain = table(rram(capsys, monkeypatch, *named).out)
    assert plain["state"].startswith("pristine") and plain["spatial field"] == "none" and plain["file"] != rows["file"]
    assert_one_line_error(rram(capsys, monkeypatch, *named, "--spatial", "-1"), "--spatial -1.0 must be a finite sd")
    assert_one_line_error(rram(capsys, monkeypatch, "sim", "status", URL, "--spatial", "0.1"), "not both")
    assert_one_line_error(rram(capsys, monkeypatch, "sim", "serve", "--spatial-len", "0"), "--spatial-len 0.0 must be")


def test_state_dir_option(capsys, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    form_cells(f"{URL}&state_dir={tmp_path}")
    assert rram(capsys, monkeypatch, "sim", "list").out.startswith("no stored chips")
    r = rram(capsys, monkeypatch, "sim", "list", "--state-dir", str(tmp_path))
    assert CHIP.name in r.out
    assert table(rram(capsys, monkeypatch, "sim", "status", f"{URL}&state_dir={tmp_path}").out)["state"] == "stored"


def _rram_subprocess(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from hil.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_serve_uses_the_store_and_saves_on_sigterm() -> None:
    cmd = [sys.executable, "-c", "from hil.cli import main; main()", "sim", "serve", "--seed", "3", "--rows", "8"]
    proc = subprocess.Popen([*cmd, "--cols", "8"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving simulated board on /dev/"), line + proc.communicate()[1]
        with Board.open(line.split()[-1]) as board:
            formed = sum(board.form(0, c, v_gate=1.0).formed for c in range(8))
        second = _rram_subprocess("sim", "serve", "--seed", "3", "--rows", "8", "--cols", "8", timeout=60)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 1 and len(lines) == 1, second.stderr
        assert f"{CHIP.name} is in use by process {proc.pid}" in lines[0]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert f"stopped (chip {CHIP.name} saved in {ChipStore().path(CHIP)})" in err
    stored = ChipStore().load(CHIP)
    assert stored is not None and int(stored.state["array/formed"][:8].sum()) == formed > 0
    with Board.open(URL) as board:  # the served chip and the sim:// chip are the same chip
        assert int(board.link.engine.array.formed[:8].sum()) == formed  # type: ignore[attr-defined]


def test_form_then_levels_as_separate_commands_find_formed_cells(tmp_path: Path) -> None:
    port = "sim://?seed=0&rows=16&cols=16"
    # a quarter of the chip (64 cells): what persists between the two processes is the same, at a quarter of the work
    common = ["--port", port, "--cells", "0:4,0:16", "--json", "-q"]
    form = _rram_subprocess("characterize", "form", *common, "-o", str(tmp_path / "form.h5"))
    assert form.returncode == 0, form.stderr
    formed = json.loads(form.stdout)["formed"]
    # the nominal forming yield of the simulated chip: form_fail_frac 2 % + stuck open 0.5 % lose ~1.6 of 64 cells;
    # more than 6 lost (Poisson: p = 0.13 %) would be a forming fault
    assert formed > 0.9 * 64
    levels = _rram_subprocess("characterize", "levels", *common, "-o", str(tmp_path / "levels.h5"))
    assert levels.returncode == 0, levels.stderr
    summary = json.loads(levels.stdout)
    assert 0 < summary["healthy"] <= formed and "RuntimeWarning" not in levels.stderr
