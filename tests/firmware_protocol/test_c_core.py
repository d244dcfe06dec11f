"""The C firmware core's own checks from pytest: its unit tests, then ASan/UBSan with a 1e5-frame fuzz pass.

Built here with the system compiler and the flags of firmware_protocol/c/Makefile (`make test`, `make asan`),
without needing make: -std=c99 -Wall -Wextra -Werror -pedantic, so a warning fails the build too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sim_backend.c_firmware import C_DIR, SOURCES

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc) on this machine")
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off", f"-I{C_DIR / 'include'}"]
SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]


def build(out: Path, main: str, *flags: str) -> Path:
    """Compile tests/<main> with the core; a compiler error or warning fails the test with its first lines."""
    assert CC is not None
    srcs = [str(C_DIR / "tests" / main), *(str(C_DIR / "src" / s) for s in SOURCES)]
    done = subprocess.run([CC, *WARN, *flags, "-o", str(out), *srcs, "-lm"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[:3000]
    return out


def run(exe: Path, *args: str) -> str:
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr, done.stderr[-3000:]
    return done.stdout


def test_the_c_unit_tests_pass(tmp_path: Path) -> None:
    out = run(build(tmp_path / "test_core", "test_core.c", "-O1"))
    checks, failures = map(int, re.search(r"(\d+) checks, (\d+) failures", out).groups())  # type: ignore[union-attr]
    assert failures == 0 and checks > 100_000


@pytest.mark.slow
def test_sanitizers_and_1e5_fuzzed_frames_find_nothing(tmp_path: Path) -> None:
    """ASan + UBSan over the unit tests and 10^5 random, bit-flipped, truncated and valid-CRC bogus frames."""
    run(build(tmp_path / "test_core_san", "test_core.c", *SAN))
    out = run(build(tmp_path / "fuzz_san", "fuzz_frames.c", *SAN, "-DRRAM_FW_TEST_HOOK=fuzz_on_frame"), "100000")
    m = re.search(r"fuzz: (\d+) inputs .* (\d+) bogus accepts, (\d+) board frames, (\d+) malformed board frames", out)
    assert m is not None, out
    inputs, bogus, board_frames, malformed = map(int, m.groups())
    assert inputs >= 100_000 and bogus == 0 and malformed == 0 and board_frames > inputs // 2


def test_the_m4_size_report_builds_or_says_why_not() -> None:
    """`make m4-size` reports flash/RAM with arm-none-eabi-gcc, and skips with the reason without it."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    done = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), "m4-size", "BUILD=/tmp/rram-fw-m4"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    if shutil.which("arm-none-eabi-gcc") is None:
        assert "skipped: arm-none-eabi-gcc is not installed" in done.stdout
    else:
        assert done.stdout.count("rram_fw_") == 2 and "text" in done.stdout
        sizes = {}  # elf name -> (flash = text + data, static RAM = data + bss), from arm-none-eabi-size's table
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 6 and parts[5].endswith(".elf") and parts[0].isdigit():
                text, data, bss = (int(x) for x in parts[:3])
                sizes[Path(parts[5]).stem] = (text + data, data + bss)
        assert set(sizes) == {"rram_fw_default", "rram_fw_small"}
        assert all(flash <= 32 * 1024 for flash, _ in sizes.values())  # the flash budget, both builds
        assert sizes["rram_fw_small"][1] <= 8 * 1024  # a small board's limits fit 8 KiB of static RAM
