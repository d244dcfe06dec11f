"""Damaged run files: a cut or emptied file gives one line naming it and what is missing, quickly.

Each read runs in a subprocess with a timeout: a truncated file once sent libhdf5's SWMR reader into
retries lasting up to an hour, and a hang must fail the test instead of blocking the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hil.characterize.runfile import RunFileError, Table, create_run, read_run
from tests.helpers.boards import open_sim, run

LIMIT_S = 5.0  # the target: every damaged-file case answers within 5 s
READ = (
    "import sys\n"
    "from hil.characterize.runfile import RunFileError, read_run\n"
    "try:\n"
    "    read_run(sys.argv[1])\n"
    "except RunFileError as exc:\n"
    "    print(exc)\n"
    "    sys.exit(3)\n"
)


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("damage") / "form.h5"
    with open_sim("inproc", seed=1, rows=4, cols=4) as (board, _):
        run(board, "form", out, cells="0:4,0:4")
    return out


def _cut(src: Path, dst: Path, n: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n])
    return dst


def _read_in_subprocess(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True, timeout=LIMIT_S + 10)


def test_intact_file_reads(intact: Path) -> None:
    data = read_run(intact)
    assert data.complete and len(data.data["form"]) == 16


@pytest.mark.parametrize("percent", [1, 5, 10, 25, 50, 90])
def test_truncated_file_is_one_line_within_5_s(intact: Path, tmp_path: Path, percent: int) -> None:
    import time

    size = intact.stat().st_size
    cut = _cut(intact, tmp_path / f"cut{percent}.h5", size * percent // 100)
    t0 = time.monotonic()
    proc = _read_in_subprocess(cut)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and proc.stderr == ""
    kept = size * percent // 100
    assert lines[0] == (
        f"{cut} is truncated ({kept} of {size} bytes, {size - kept} missing): copy it again from the source"
    )
    assert elapsed < LIMIT_S + 2, f"{elapsed:.1f} s"  # + interpreter start-up of the subprocess


@pytest.mark.parametrize(
    ("n", "words"), [(0, "is empty"), (30, "inside the HDF5 superblock"), (4, "no HDF5 signature")]
)
def test_cut_to_nothing_or_inside_the_superblock(intact: Path, tmp_path: Path, n: int, words: str) -> None:
    cut = _cut(intact, tmp_path / "cut.h5", n)
    with pytest.raises(RunFileError, match=words):
        read_run(cut)


def test_rram_plot_on_a_truncated_file_is_one_error_line(intact: Path, tmp_path: Path) -> None:
    cut = _cut(intact, tmp_path / "cut.h5", intact.stat().st_size // 10)
    proc = subprocess.run(
        [sys.executable, "-c", "from hil.cli import main; main()", "plot", str(cut), "-o", str(tmp_path / "figs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "is truncated" in lines[0], lines
    assert not (tmp_path / "figs").exists() or not any((tmp_path / "figs").iterdir())


def test_tables_claiming_more_than_the_file_are_refused_before_reading(tmp_path: Path) -> None:
    """A shape grown to 10^9 rows that were never written: refused, not 8 GB allocated."""
    import h5py

    out = tmp_path / "run.h5"
    with create_run(out, "form", {}, {}, {"t": Table({"g": ("f8", ())})}) as w:
        w.append("t", g=1.0)
    with h5py.File(out, "r+") as f:
        f["data/t"].resize(10**9, axis=0)
    with pytest.raises(RunFileError, match=r"tables claim 8000000000 bytes, more than the file's \d+"):
        read_run(out)
