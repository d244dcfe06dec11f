"""The shared file-format helper: stamps, the one-line version checks, atomic writes, provenance stamps."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from firmware_protocol.fileformat import FileFormat, atomic_write, software_version, temporary_path, utc_now

DOTTED = FileFormat("rram-hil-thing", "1.2", "an rram-hil thing")
WHOLE = FileFormat("rram-hil/thing", "3", "a thing file", version_key="version")
IN_NAME = FileFormat("rram-hil-thing", "1", "a thing file", version_key=None)


class ThingError(ValueError):
    pass


def _refusal(fmt: FileFormat, attrs: dict) -> str:
    with pytest.raises(ThingError) as info:
        fmt.check(attrs, "f.h5", ThingError)
    text = str(info.value)
    assert "\n" not in text and text.startswith("f.h5 ")
    return text


def test_stamps_are_what_files_store() -> None:
    assert DOTTED.stamp() == {"format": "rram-hil-thing", "format_version": "1.2"}
    assert WHOLE.stamp() == {"format": "rram-hil/thing", "version": 3}
    assert IN_NAME.stamp() == {"format": "rram-hil-thing/1"}
    assert (DOTTED.major, WHOLE.major, IN_NAME.major) == (1, 3, 1)


def test_check_returns_the_files_version() -> None:
    assert DOTTED.check(DOTTED.stamp(), "f.h5") == "1.2"
    assert DOTTED.check({"format": b"rram-hil-thing", "format_version": b"1.9"}, "f.h5") == "1.9"  # h5py bytes
    assert DOTTED.check({"format": "rram-hil-thing", "format_version": "0.4"}, "f.h5") == "0.4"  # older: readable
    assert WHOLE.check({"format": "rram-hil/thing", "version": np.int64(2)}, "f.h5") == "2"
    assert IN_NAME.check({"format": "rram-hil-thing/1"}, "f.h5") == "1"


@pytest.mark.parametrize(
    "fmt, attrs",
    [
        (DOTTED, {}),
        (DOTTED, {"format": "something-else", "format_version": "1.0"}),
        (WHOLE, {"format": "rram-hil/thing-else", "version": 1}),
        (IN_NAME, {"format": "rram-hil-thing"}),
        (IN_NAME, {"format": "rram-hil-things/1"}),
    ],
)
def test_another_format_is_refused_in_one_line(fmt: FileFormat, attrs: dict) -> None:
    assert _refusal(fmt, attrs) == f"f.h5 is not {fmt.what}"


@pytest.mark.parametrize(
    "fmt, attrs, expected",
    [
        (DOTTED, {"format": "rram-hil-thing"}, "major.minor"),
        (DOTTED, {"format": "rram-hil-thing", "format_version": "1"}, "major.minor"),
        (DOTTED, {"format": "rram-hil-thing", "format_version": "1.2.3"}, "major.minor"),
        (DOTTED, {"format": "rram-hil-thing", "format_version": 1.2}, "major.minor"),
        (WHOLE, {"format": "rram-hil/thing", "version": "two"}, "a whole number"),
        (WHOLE, {"format": "rram-hil/thing", "version": True}, "a whole number"),
        (WHOLE, {"format": "rram-hil/thing", "version": -1}, "a whole number"),
        (IN_NAME, {"format": "rram-hil-thing/1.0"}, "a whole number"),
    ],
)
def test_an_unreadable_version_is_refused_in_one_line(fmt: FileFormat, attrs: dict, expected: str) -> None:
    text = _refusal(fmt, attrs)
    assert text.startswith(f"f.h5 is {fmt.what} with an unreadable format version ")
    assert f"(expected {expected}, like " in text


@pytest.mark.parametrize(
    "fmt, attrs, got",
    [
        (DOTTED, {"format": "rram-hil-thing", "format_version": "2.0"}, "2.0"),
        (WHOLE, {"format": "rram-hil/thing", "version": 4}, "4"),
        (IN_NAME, {"format": "rram-hil-thing/2"}, "2"),
    ],
)
def test_a_newer_major_is_refused_in_one_line(fmt: FileFormat, attrs: dict, got: str) -> None:
    assert _refusal(fmt, attrs) == (
        f"f.h5 is {fmt.what} of format {got}, newer than this software reads ({fmt.version}); update rram-hil"
    )


def test_a_newer_minor_is_readable() -> None:
    assert DOTTED.check({"format": "rram-hil-thing", "format_version": "1.15"}, "f.h5") == "1.15"


def test_bad_declarations_are_refused() -> None:
    for version in ("1.x", "", "v1"):
        with pytest.raises(ValueError, match="MAJOR.MINOR"):
            FileFormat("x", version, "an x")
    with pytest.raises(ValueError, match="whole number"):
        FileFormat("x", "1.0", "an x", version_key=None)


# ------------------------------------------------------------------------------------------- atomic_write


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_in_one_step(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_write(target, force=False) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing at the target until the write has succeeded
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == []
    with atomic_write(target, force=True) as tmp:
        tmp.write_bytes(b"newer")
    assert target.read_bytes() == b"newer" and _leftovers(tmp_path) == []


def test_atomic_write_error_leaves_no_temporary_and_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half-way"), atomic_write(target, force=True) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("died half-way")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.bin"
    with pytest.raises(RuntimeError), atomic_write(fresh, force=False) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("died")
    assert not fresh.exists() and _leftovers(tmp_path) == []


def test_atomic_write_refuses_an_existing_file_in_one_line(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError) as info, atomic_write(target, force=False, refusal="use --force, or not"):
        pytest.fail("the body must not run")
    assert str(info.value) == f"{target} already exists (use --force, or not)"
    with pytest.raises(FileNotFoundError, match="does not exist"), atomic_write(tmp_path / "no" / "x", force=True):
        pytest.fail("the body must not run")
    assert target.read_bytes() == b"old"


def test_a_file_appearing_while_writing_is_not_clobbered(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(FileExistsError, match="already exists"), atomic_write(target, force=False) as tmp:
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")  # another writer finished first
    assert target.read_bytes() == b"theirs" and _leftovers(tmp_path) == []


def test_temporary_names_never_collide(tmp_path: Path) -> None:
    target = tmp_path / "run.h5"
    names = {temporary_path(target) for _ in range(200)}
    assert len(names) == 200
    assert all(n.parent == tmp_path and n.name.startswith(f"run.h5.{os.getpid()}.") for n in names)
    seen: list[Path] = []
    barrier = threading.Barrier(2)

    def writer(data: bytes) -> None:
        with atomic_write(target, force=True) as tmp:
            seen.append(tmp)
            barrier.wait(timeout=5)  # both temporaries exist at once
            tmp.write_bytes(data)

    threads = [threading.Thread(target=writer, args=(d,)) for d in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2 and target.read_bytes() in (b"a", b"b") and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- provenance


def test_utc_now_is_iso_utc_with_seconds() -> None:
    stamp = utc_now()
    parsed = dt.datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == dt.timedelta(0) and parsed.microsecond == 0 and stamp.endswith("+00:00")
    assert abs((dt.datetime.now(dt.timezone.utc) - parsed).total_seconds()) < 5


def test_software_version_is_a_version_or_unknown() -> None:
    version = software_version()
    assert version == "unknown" or version[0].isdigit()
