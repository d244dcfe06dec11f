"""One writer per run file: `--resume` and `--force` on a file another live process writes are refused in one
line naming its pid, the live writer carries on unharmed, a lock left by a dead process never blocks, and every
writer's temporary file has a name of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from firmware_protocol.fileformat import atomic_write, temporary_path
from hil.characterize.runfile import RunBusyError, RunFileError, Table, create_run, read_run, resume_run
from hil.characterize.runlock import lock_path, writer_pid
from tests.helpers.cli import assert_one_line_error, rram

TABLE = {"x": Table({"v": ("f8", ())})}
READ_NOISE = ["--cells", "0:16,0:16", "--reads", "1000000", "--no-program", "--skip-unformed", "-q"]


def test_every_writer_gets_its_own_temporary_name(tmp_path: Path) -> None:
    """Two `--force` runs once shared `RUN.h5.tmp`; the name now carries the pid and a random token."""
    target = tmp_path / "run.h5"
    names = {temporary_path(target) for _ in range(100)}
    assert len(names) == 100 and all(n.name.startswith(f"run.h5.{os.getpid()}.") for n in names)
    with atomic_write(target, force=True) as a, atomic_write(target, force=True) as b:  # two writers at once
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_a_second_writer_in_this_process_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    run = create_run(out, "probe", {}, {}, TABLE)
    with run as w:
        w.append("x", v=1.0)
        assert writer_pid(out) == os.getpid()
        with pytest.raises(RunBusyError, match=r"is already being written in this process \(pid \d+\); close that"):
            create_run(out, "probe", {}, {}, TABLE, force=True)
        with pytest.raises(RunBusyError, match="already being written in this process"):
            resume_run(out, "probe", {})
    assert writer_pid(out) == os.getpid()  # kept after the block, until the run is completed
    run.complete({})
    assert writer_pid(out) is None and not lock_path(out).exists()
    create_run(out, "probe", {}, {}, TABLE, force=True).close()
    assert read_run(out).status == "running" and sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_a_lock_left_by_a_dead_process_never_blocks(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    create_run(out, "probe", {}, {}, TABLE).close()
    code = "import sys; from pathlib import Path; from hil.characterize.runlock import RunLock; import os\n"
    code += "lock = RunLock.acquire(Path(sys.argv[1])); os._exit(0)  # dies holding it, as a killed writer does"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=60)
    assert lock_path(out).exists() and writer_pid(out) is None  # its file stays; the OS dropped its flock
    (tmp_path / "run.h5.4242.0123456789ab.tmp").write_bytes(b"left by a killed writer")
    with resume_run(out, "probe", {}) as w:
        w.append("x", v=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]  # lock and the dead writer's temporary gone
    assert read_run(out).data["x"]["v"].tolist() == [2.0]


def test_a_lock_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"folder .*missing does not exist"):
        create_run(tmp_path / "missing" / "run.h5", "probe", {}, {}, TABLE)
    lock_path(tmp_path / "run.h5").mkdir()  # something that is no lock file where the lock file goes
    with pytest.raises(RunFileError, match=r"cannot create the lock file .*run\.h5\.lock \(Is a directory\)"):
        create_run(tmp_path / "run.h5", "probe", {}, {}, TABLE)
    assert not (tmp_path / "run.h5").exists()


@pytest.fixture
def live_writer(tmp_path: Path):
    """`rram characterize read-noise` writing run.h5 in another process (simulated chip seed 3), with reads on disk."""
    out = tmp_path / "run.h5"
    port = "sim://?seed=3&rows=16&cols=16"
    cmd = [sys.executable, "-c", "from hil.cli import main; main()", "characterize", "read-noise", "--port", port]
    proc = subprocess.Popen(
        [*cmd, *READ_NOISE, "-o", str(out), "--flush-s", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(read_run(out).data["reads"]) >= 20:
                    break
            except (FileNotFoundError, RunFileError):
                pass
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        yield out, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resume_and_force_of_a_live_run_are_refused_and_the_writer_carries_on(
    capsys, monkeypatch, live_writer: tuple[Path, subprocess.Popen]
) -> None:
    out, proc = live_writer
    busy = f"{out} is being written by another rram process (pid {proc.pid}); wait for it or stop it"
    other_chip = ["characterize", "read-noise", "--port", "sim://?seed=4&rows=16&cols=16", *READ_NOISE, "-o", str(out)]
    assert_one_line_error(rram(capsys, monkeypatch, *other_chip, "--resume"), busy)
    assert_one_line_error(rram(capsys, monkeypatch, *other_chip, "--force"), busy)
    with pytest.raises(RunBusyError, match=f"pid {proc.pid}"):
        create_run(out, "read-noise", {}, {}, TABLE, force=True)
    seen = len(read_run(out).data["reads"])
    assert proc.poll() is None  # still writing, into the same file
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # a clean stop: the writer flushes, closes and lets go of the lock
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.strip().splitlines() == [
        f"Error: interrupted: data up to the last flush are in {out}; continue with --resume"
    ]
    rd = read_run(out)
    assert rd.status == "running" and seen < len(rd.data["reads"]) < 1_000_000
    assert np.all(np.diff(rd.data["reads"]["t"]) > 0) and not lock_path(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5"]
