"""Damaged run files: a cut, emptied, resized, edited or bit-damaged file gives one line naming it, the table
and what to do next, quickly, from `read_run`, `rram plot`, `rram fit` and `--resume` alike.

Each read runs in a subprocess with a timeout: a truncated file once sent libhdf5's SWMR reader into
retries lasting up to an hour, and a hang must fail the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from hil.characterize.runfile import RunFileError, Table, create_run, read_run
from tests.helpers.boards import open_sim, run
from tests.helpers.cli import assert_one_line_error, rram

PORT = "sim://?seed=1&rows=4&cols=4"  # the chip the `intact` run was measured on

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
    with create_run(out, "probe", {}, {}, {"t": Table({"g": ("f8", ())})}) as w:
        w.append("t", g=1.0)
    with h5py.File(out, "r+") as f:
        f["data/t"].resize(10**9, axis=0)
    with pytest.raises(RunFileError, match=r"table 't' claims 1000000000 records \(8000000000 bytes\), more than"):
        read_run(out)


# ------------------------------------------------------------------------------------ edited and damaged tables


def _running_copy(src: Path, dst: Path) -> Path:
    """`src` as an interrupted run leaves it: status running (what `--resume` accepts)."""
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        f.attrs["status"] = "running"
        for key in ("completed_utc", "summary_json"):
            del f.attrs[key]
    return dst


def _chunk_offset(f: h5py.File, table: str, chunk: int = 0) -> int:
    return int(f[f"data/{table}"].id.get_chunk_info(chunk).byte_offset)


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _resize_2_44(f: h5py.File) -> None:
    f["data/form"].resize(2**44, axis=0)


def _delete_table(f: h5py.File) -> None:
    del f["data/form"]


def _delete_table_and_declaration(f: h5py.File) -> None:
    del f["data/form"]
    f.attrs["tables_json"] = json.dumps({k: v for k, v in json.loads(f.attrs["tables_json"]).items() if k != "form"})


def _not_records(f: h5py.File) -> None:
    del f["data/form"]
    f["data"].create_dataset("form", data=np.zeros(16), maxshape=(None,), chunks=(16,))


def _other_fields(f: h5py.File) -> None:
    rows = f["data/form"][...]
    dt = np.dtype([(n, "f4" if n == "g_after" else rows.dtype[n]) for n in rows.dtype.names])
    del f["data/form"]
    f["data"].create_dataset("form", data=rows.astype(dt), maxshape=(None,), chunks=(16,))


def _count_beyond(f: h5py.File) -> None:
    names = list(json.loads(f.attrs["tables_json"]))
    n_state = max(1, len(json.loads(f.attrs["state_keys"])))
    f["state"][n_state + names.index("form")] = 1e6


# name -> (edit made with h5py, or None for the byte damage below; what the one line says)
DAMAGE: dict[str, tuple[Callable[[h5py.File], None] | None, str]] = {
    "rows-2^44": (_resize_2_44, "table 'form' claims 17592186044416 records (580542139465728 bytes), more than"),
    "table-deleted": (_delete_table, "table 'form' is missing (the file declares it)"),
    "table-and-declaration-deleted": (_delete_table_and_declaration, "table 'form' is missing (a form run has it)"),
    "not-records": (_not_records, "table 'form' is not a 1-D table of records"),
    "other-dtype": (
        _other_fields,
        "table 'form' holds records of (cell i4 (2,), formed u1, pulses i4, v_form f4, "
        "g_after f4, t f8), not the declared (cell i4 (2,), formed u1, pulses i4, v_form f4, g_after f8",
    ),
    "count-beyond-table": (_count_beyond, "table 'form' has a committed count of 1e+06 records, outside its 16"),
    "16-bytes-in-a-chunk": (None, "table 'form' failed its checksum (chunk of records 0 to 15 damaged); the 0 records"),
}


def _damage(src: Path, dst: Path, how: str) -> Path:
    edit, _ = DAMAGE[how]
    dst.write_bytes(src.read_bytes())
    if edit is None:
        with h5py.File(dst, "r") as f:
            offset = _chunk_offset(f, "form")
        _overwrite(dst, offset + 40, b"\xff" * 16)  # inside record 1: its cell, formed and pulses fields
    else:
        with h5py.File(dst, "r+") as f:
            edit(f)
    return dst


@pytest.fixture(scope="module")
def interrupted(intact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _running_copy(intact, tmp_path_factory.mktemp("running") / "form.h5")


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_table_is_one_line_from_read_run_within_5_s(intact: Path, tmp_path: Path, how: str) -> None:
    bad = _damage(intact, tmp_path / "bad.h5", how)
    t0 = time.monotonic()
    proc = _read_in_subprocess(bad)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 3 and proc.stderr == "", proc.stderr  # a RunFileError, no MemoryError or traceback
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{bad}: ") and DAMAGE[how][1] in lines[0], lines
    assert lines[0].endswith("copy it again from its source, or measure again")
    assert elapsed < LIMIT_S + 2, f"{elapsed:.1f} s"  # + interpreter start-up of the subprocess


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("command", ["plot", "fit", "resume"])
def test_damaged_table_is_one_line_from_plot_fit_and_resume(
    capsys, monkeypatch, interrupted: Path, tmp_path: Path, how: str, command: str
) -> None:
    bad = _damage(interrupted, tmp_path / "bad.h5", how)
    raw = bad.read_bytes()
    args = {
        "plot": ["plot", str(bad), "-o", str(tmp_path / "figs")],
        "fit": ["fit", str(bad), "-o", str(tmp_path / "p.h5")],
        "resume": ["characterize", "form", "--port", PORT, "--cells", "0:4,0:4", "-o", str(bad), "--resume", "-q"],
    }[command]
    t0 = time.monotonic()
    r = rram(capsys, monkeypatch, *args)
    assert time.monotonic() - t0 < LIMIT_S
    if command == "fit":  # `rram fit` says what it starts on stderr first
        assert r.err.startswith("fitting 1 run file(s) ...\n")
        r.err = r.err.split("\n", 1)[1]
    assert_one_line_error(r, str(bad), DAMAGE[how][1])
    assert bad.read_bytes() == raw  # a refused resume copies nothing and leaves the file as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5"]  # no figure, profile, temporary or lock file


def test_damaged_chunk_names_the_records_before_it_and_resume_refuses(tmp_path: Path) -> None:
    """Three chunks of 128 records; 16 bytes overwritten in the second: records 0-127 are named intact."""
    out = tmp_path / "run.h5"
    table = Table({"g": ("f8", (64,))})  # 512-byte records: 128 per 64 KiB chunk
    with create_run(out, "probe", {}, {}, {"t": table}) as w:
        w.append("t", np.array([(np.full(64, float(i)),) for i in range(300)], dtype=table.dtype))
    assert read_run(out).data["t"]["g"][299, 0] == 299.0
    with h5py.File(out, "r") as f:
        offset = _chunk_offset(f, "t", 1)
    _overwrite(out, offset + 1000, b"\x00" * 16)
    raw = out.read_bytes()
    words = "table 't' failed its checksum (chunk of records 128 to 255 damaged); the 128 records before it are intact"
    with pytest.raises(RunFileError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_run(out)
    from hil.characterize.runfile import resume_run

    with pytest.raises(RunFileError, match="failed its checksum"):
        resume_run(out, "probe", {})
    assert out.read_bytes() == raw and sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_a_table_the_file_lacks_is_a_one_line_error_naming_it(intact: Path) -> None:
    """Readers index tables by name: one the file lacks is a RunFileError naming the file, not a bare KeyError."""
    rd = read_run(intact)
    with pytest.raises(RunFileError, match=rf"^{intact}: this form run file has no table 'verified'; copy it again"):
        rd.data["verified"]
    assert rd.data.get("verified") is None and "form" in rd.data
