"""Crash safety: `rram characterize` killed with SIGKILL mid-run leaves a readable run file holding what was
flushed, and `--resume` completes it to exactly the records of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hil.characterize.runfile import RunFileError, read_run
from hil.cli import cli
from tests.helpers.cli import assert_one_line_error, rram

PORT = "sim://?seed=2&rows=32&cols=32"
# The run is killed right after its 100th read reached the disk (the file is polled every ~70 ms); at ~160 reads/s
# (2 busy cores) 1000 reads leave it ~5.6 s before it could end on its own, and the resume (~900 reads) stays short.
READS = 1000
ARGS = [
    "characterize",
    "read-noise",
    "--port",
    PORT,
    "--cells",
    "0:32,0:32",
    "--reads",
    str(READS),
    "--no-program",
    "--skip-unformed",  # a pristine chip: the reads go on, the summary uses no cell
    "-q",
]


def _records(path: Path) -> int | None:
    """Reads recorded so far, or None while the file is not there / not yet readable."""
    try:
        return len(read_run(path).data["reads"])
    except (FileNotFoundError, RunFileError, OSError, KeyError):
        return None


@pytest.fixture
def killed_run(tmp_path: Path) -> tuple[Path, dict]:
    """A read-noise run killed with SIGKILL after at least 100 reads reached the disk."""
    out = tmp_path / "run.h5"
    cmd = [sys.executable, "-c", "from hil.cli import main; main()", *ARGS, "-o", str(out), "--flush-s", "0.02"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            n = _records(out)
            if n is not None and n >= 100:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rd = read_run(out)
    return out, {"status": rd.status, "reads": rd.data["reads"].copy(), "program": rd.data["program"].copy()}


def test_killed_run_keeps_its_flushed_data_and_resume_completes_it(killed_run: tuple[Path, dict]) -> None:
    out, before = killed_run
    assert before["status"] == "running"
    k = len(before["reads"])
    assert 100 <= k < READS
    assert np.all(np.isfinite(before["reads"]["g"])) and np.all(np.diff(before["reads"]["t"]) > 0)
    assert np.all(before["reads"]["t"] > 0)  # whole records only: none left all-zero by the kill
    assert (out.parent / "run.h5.lock").exists()  # left by the killed writer: stale, it must not block

    result = CliRunner().invoke(cli, [*ARGS, "-o", str(out), "--resume", "--json"])
    assert result.exit_code == 0, result.output
    rd = read_run(out)
    assert rd.complete and rd.attrs["resumed"] == 1 and rd.summary["reads"] == READS
    reads = rd.data["reads"]
    assert len(reads) == READS and len(rd.data["program"]) == 0  # exactly the records of a clean run
    assert np.array_equal(reads[:k], before["reads"])  # what was flushed is kept as it was
    assert np.all(np.isfinite(reads["g"]))
    # the resumed part comes from a fresh simulated board with the same seed: the same chip
    assert np.median(reads["g"][k:]) == pytest.approx(np.median(before["reads"]["g"]), abs=0.05e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5"]  # stale lock and temporaries cleaned up


def test_wrong_resume_of_a_killed_run_is_refused_and_leaves_the_file_alone(
    capsys, monkeypatch, killed_run: tuple[Path, dict]
) -> None:
    out, _ = killed_run
    raw = out.read_bytes()
    args = [a if a != str(READS) else "100" for a in ARGS]
    assert_one_line_error(rram(capsys, monkeypatch, *args, "-o", str(out), "--resume"), "other parameters (reads)")
    assert out.read_bytes() == raw
    r = rram(capsys, monkeypatch, "characterize", "levels", "--port", PORT, "-o", str(out), "--resume")
    assert_one_line_error(r, "is a 'read-noise' run, not 'levels'")
    assert out.read_bytes() == raw
    assert_one_line_error(rram(capsys, monkeypatch, *ARGS, "-o", str(out)), "already exists")  # no --resume/--force
    assert out.read_bytes() == raw
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5"]
