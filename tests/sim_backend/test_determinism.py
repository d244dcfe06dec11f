"""Deterministic simulation: the same seed and the same board operations give bit-identical records,
whatever the host's chunk sizes, the link's faults, a process boundary or the thread running the board."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hil.characterize.runfile import read_run
from hil.hardware.board import Board
from sim_backend.board_config import BoardConfig
from sim_backend.device_model import RRAMArray
from sim_backend.firmware import FirmwareEngine
from sim_backend.link import SimLink
from sim_backend.sim_url import make_sim_url
from tests.conftest import FIRMWARES
from tests.helpers.boards import current_firmware, new_engine, open_sim, run

REPO = Path(__file__).resolve().parents[2]
SEED, ROWS, COLS = 21, 8, 8
CELLS = "0:4,0:8"  # 32 cells: the write-verify batch and the block reads below are split in several requests
FORM = dict(cells=CELLS)
LEVELS = dict(cells=CELLS, levels=4, gate_points=4, cal_cells=4, read_times="1,10", max_pulses=40)
ENDURANCE = dict(cells=CELLS, cycles=3000, read_every=100)  # 30 read points: several stream windows


def _run_all(board: Board, out: Path, procedures: tuple[str, ...] = ("form", "levels", "endurance")) -> dict:
    """Run the procedures in order on one board; the data tables of each run file, by procedure."""
    params = {"form": FORM, "levels": LEVELS, "endurance": ENDURANCE}
    tables = {}
    for name in procedures:
        path = out / f"{name}.h5"
        run(board, name, path, **params[name])
        tables[name] = read_run(path).data
    return tables


def _chip(engine: FirmwareEngine) -> dict[str, np.ndarray]:
    """The chip's whole state (array, clock, event counters, pulse counters), without the boot count."""
    return {k: v for k, v in engine.export_state().items() if k != "boots"}


def _assert_identical(a: dict, b: dict) -> None:
    """Bit-identical: same keys, dtypes, shapes and bytes (NaN equals NaN)."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_identical(a[key], b[key])
            continue
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert x.tobytes() == y.tobytes(), f"{key} differs"


def _small_chunks(board: Board) -> None:
    """Force the host's adaptive chunking small: 3 cells per WRITE_VERIFY, 5 cells per READ_BLOCK."""
    board._wv.limit = board._wv.size = 3
    board._block.limit = board._block.size = 5


def _url(**faults: float) -> str:
    """The test chip's URL, on the running test's firmware (the reference always runs the Python one)."""
    firmware = {"firmware": "c"} if current_firmware() == "c" else {}
    return make_sim_url(SEED, ROWS, COLS, persist=0, **faults, **firmware)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """form, levels and endurance on a fresh chip over a clean in-process link, default chunk sizes."""
    out = tmp_path_factory.mktemp("reference")
    with Board.open(_url()) as board:
        tables = _run_all(board, out)
        return tables, _chip(board.link.engine)  # type: ignore[attr-defined]


def test_reference_run_did_real_work(reference: tuple[dict, dict]) -> None:
    tables, _ = reference
    assert tables["form"]["form"].size == 32 and tables["levels"]["verified"].size == 32
    assert np.mean(tables["levels"]["verified"]["status"] == 0) > 0.5  # most cells converged
    assert tables["endurance"]["endurance"].size == 30


@pytest.mark.parametrize("firmware", FIRMWARES, indirect=True)
def test_small_client_chunks_give_identical_records(
    reference: tuple[dict, dict], tmp_path: Path, firmware: str
) -> None:
    """Also the C firmware: its records are the Python firmware's, record for record (the reference is Python's)."""
    with Board.open(_url()) as board:
        _small_chunks(board)
        tables = _run_all(board, tmp_path)
        assert board._wv.size == 3  # the small sizes were in force throughout
        chip = _chip(board.link.engine)  # type: ignore[attr-defined]
    _assert_identical(tables, reference[0])
    _assert_identical(chip, reference[1])


def test_faulty_link_gives_identical_records(reference: tuple[dict, dict], tmp_path: Path) -> None:
    """Corrupted and lost bytes (NAKs, timeouts, retries answered from the cache) and held-back answers.

    0.2 % per byte already makes the host shrink its write-verify batches to one cell; at 1 % these
    procedures need ~3000 requests and ~4 minutes, for the same check.
    """
    with Board.open(_url(flip=0.002, drop=0.002, delay=0.05), retries=40) as board:
        tables = _run_all(board, tmp_path)
        stats, wv_size = board.stats, board._wv.size
        chip = _chip(board.link.engine)  # type: ignore[attr-defined]
    assert stats.retries > 0 and stats.naks > 0 and stats.corrupt_frames > 0  # the faults did bite
    assert wv_size < 32  # and the host did split its batches differently from the clean run
    _assert_identical(tables, reference[0])
    _assert_identical(chip, reference[1])


def test_board_served_from_another_thread_gives_identical_records(reference: tuple[dict, dict], tmp_path: Path) -> None:
    with open_sim("pty", SEED, ROWS, COLS) as (board, engine):
        _small_chunks(board)
        tables = _run_all(board, tmp_path)
        chip = _chip(engine)
    _assert_identical(tables, reference[0])
    _assert_identical(chip, reference[1])


@pytest.mark.parametrize("firmware", FIRMWARES, indirect=True)
def test_export_import_between_procedures_gives_identical_records(
    reference: tuple[dict, dict], tmp_path: Path, firmware: str
) -> None:
    """What the chip store does between two processes: export_state, a new engine, import_state (either firmware)."""
    config = BoardConfig(rows=ROWS, cols=COLS, seed=SEED)
    first = new_engine(config)
    with Board(SimLink(first)) as board:
        tables = _run_all(board, tmp_path, ("form",))
    second = new_engine(config)
    second.import_state(first.export_state())
    assert second.session_id != first.session_id  # it booted as a new power-up
    with Board(SimLink(second)) as board:
        _small_chunks(board)
        tables.update(_run_all(board, tmp_path, ("levels", "endurance")))
    _assert_identical(tables, reference[0])
    _assert_identical(_chip(second), reference[1])


def _rram(tmp_path: Path, *args: str) -> None:
    """The `rram` CLI in a subprocess (it inherits this test's RRAM_SIM_STATE_DIR), on one BLAS thread."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from hil.cli import main; main()", *args]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_two_cli_processes_on_a_persistent_chip_give_identical_records(
    reference: tuple[dict, dict], tmp_path: Path
) -> None:
    port = make_sim_url(SEED, ROWS, COLS)  # persistent: the second process finds the formed chip
    _rram(tmp_path, "characterize", "form", "--port", port, "--cells", CELLS, "-o", "form.h5")
    levels_opts = ["--levels", "4", "--gate-points", "4", "--cal-cells", "4", "--read-times", "1,10"]
    _rram(
        tmp_path,
        "characterize",
        "levels",
        "--port",
        port,
        "--cells",
        CELLS,
        *levels_opts,
        "--max-pulses",
        "40",
        "-o",
        "levels.h5",
    )
    tables = {name: read_run(tmp_path / f"{name}.h5").data for name in ("form", "levels")}
    _assert_identical(tables, {k: reference[0][k] for k in ("form", "levels")})


_RECORDS_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
import numpy as np
try:
    from numpy._core import _multiarray_umath as umath
except ImportError:  # numpy 1.x
    from numpy.core import _multiarray_umath as umath
from hil.hardware.board import Board
from tests.sim_backend.test_determinism import _chip, _run_all, _url

digests = {}
with Board.open(_url()) as board:
    for procedure in ("form", "levels", "endurance"):  # the chip after each (endurance rewrites its values)
        _run_all(board, Path(sys.argv[1]), (procedure,))
        state = _chip(board.link.engine)
        digest = hashlib.sha256()
        for key in sorted(state):
            digest.update(key.encode() + np.ascontiguousarray(state[key]).tobytes())
        digests[procedure] = digest.hexdigest()
active = [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]
print(json.dumps({"states": digests, "vector_kernels": active}))
"""


def _records_in_a_process(out: Path, disable_vector_kernels: bool) -> tuple[dict, dict]:
    """form, levels and endurance on a fresh chip in a new process, with numpy's vector kernels (the CPU
    features it dispatches to at run time beyond its baseline) on or off: (run tables, the process's report)."""
    import json

    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as umath

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("NPY_DISABLE_CPU_FEATURES", None)
    if disable_vector_kernels:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(umath.__cpu_dispatch__)
    out.mkdir()
    cmd = [sys.executable, "-c", _RECORDS_SCRIPT, str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tables = {name: read_run(out / f"{name}.h5").data for name in ("form", "levels", "endurance")}
    return tables, json.loads(done.stdout.strip().splitlines()[-1])


def test_numpys_vector_kernels_do_not_change_the_records(tmp_path: Path) -> None:
    """numpy picks vector kernels for exp, log, sinh ... by the CPU it runs on (AVX2, AVX-512, ...), and a
    kernel may round differently from the scalar code: the same seed must still give the same records, and the
    same chip after every procedure, on every machine. Checked here between this CPU's kernels and numpy's
    baseline code (all dispatch off)."""
    fast, fast_report = _records_in_a_process(tmp_path / "vector", disable_vector_kernels=False)
    if not fast_report["vector_kernels"]:
        pytest.skip("numpy uses no vector kernels beyond its baseline on this CPU: nothing to compare")
    base, base_report = _records_in_a_process(tmp_path / "baseline", disable_vector_kernels=True)
    assert base_report["vector_kernels"] == []  # the switch took effect
    _assert_identical(fast, base)
    assert fast_report["states"] == base_report["states"]


# ------------------------------------------------------------------------------------- array level
def _formed(seed: int = 3) -> RRAMArray:
    a = RRAMArray(8, 8, seed=seed)
    r, c = a.all_cells()
    a.form(r, c, 3.6, 1000.0, 1.0)
    return a


def test_array_calls_split_row_major_give_identical_numbers() -> None:
    whole, split = _formed(), _formed()
    r, c = whole.all_cells()
    i_whole = [whole.reset_pulse(r, c, -1.5, 100, 3.0), whole.read_current(r, c, 0.1)]
    i_split = [
        np.concatenate(
            [split.reset_pulse(r[:13], c[:13], -1.5, 100, 3.0), split.reset_pulse(r[13:], c[13:], -1.5, 100, 3.0)]
        ),
        np.concatenate([split.read_current(r[:40], c[:40], 0.1), split.read_current(r[40:], c[40:], 0.1)]),
    ]
    for x, y in zip(i_whole, i_split):
        assert x.tobytes() == y.tobytes()
    _assert_identical(whole.export_state(), split.export_state())


def test_a_cells_noise_does_not_depend_on_its_batch_mates() -> None:
    """The same operations on cell 5 at the same times give the same numbers with or without other cells."""
    alone, crowd = _formed(), _formed()
    t = alone.clock_ns + 1000 * np.arange(1, 4)
    a = [alone.set_pulse([0], [5], 1.0, 50, 1.1, at_ns=t[:1]), alone.read_current([0], [5], 0.1, at_ns=t[1:2])]
    b = [
        crowd.set_pulse([3, 0, 7], [1, 5, 2], 1.0, 50, 1.1, at_ns=np.repeat(t[:1], 3)),
        crowd.read_current([7, 0], [7, 5], 0.1, at_ns=np.repeat(t[1:2], 2)),
    ]
    assert a[0][0] == b[0][1] and a[1][0] == b[1][1]
    assert alone.conductance([0], [5]) == crowd.conductance([0], [5])
    assert alone.clock_ns == crowd.clock_ns  # explicit times leave the clock alone


def test_repeated_cell_in_one_read_takes_successive_events() -> None:
    a, b = _formed(), _formed()
    twice = a.read_current([1, 1], [2, 2], 0.1)
    once = np.concatenate([b.read_current([1], [2], 0.1), b.read_current([1], [2], 0.1)])
    assert twice.tobytes() == once.tobytes() and twice[0] != twice[1]


def test_explicit_times_in_the_past_are_refused() -> None:
    a = _formed()
    with pytest.raises(ValueError, match="before the clock"):
        a.read_current([0], [0], 0.1, at_ns=np.array([a.clock_ns - 1]))
    with pytest.raises(ValueError, match="integer nanosecond"):
        a.read_current([0], [0], 0.1, at_ns=np.array([1.5]))
    with pytest.raises(ValueError, match="never goes back"):
        a.advance_to_ns(a.clock_ns - 1)


def test_endurance_call_split_keeps_each_cells_reads_independent_of_the_others() -> None:
    """cycle() draws are keyed by cell and read point: the cells' numbers do not depend on the block."""
    whole, part = _formed(), _formed()
    r, c = whole.all_cells()
    res_whole = whole.cycle(r, c, 400, 100, 1.0, 50.0, 1.2, -1.0, 50.0, 3.0, 0.1)  # partial pulses: warm-ups
    res_part = part.cycle(r[:7], c[:7], 400, 100, 1.0, 50.0, 1.2, -1.0, 50.0, 3.0, 0.1)
    assert res_whole.lrs_current[:, :7].tobytes() == res_part.lrs_current.tobytes()
    assert res_whole.hrs_current[:, :7].tobytes() == res_part.hrs_current.tobytes()


def test_state_carries_event_counters_and_exact_clock() -> None:
    a = _formed()
    a.advance(1.234567891)
    state = a.export_state()
    assert state["clock_ns"].dtype == np.int64 and int(state["clock_ns"]) == a.clock_ns
    assert state["_events"].dtype == np.uint64 and state["_events"].min() == 1  # every cell saw the FORM pulse
    b = RRAMArray(8, 8, seed=3)
    b.import_state(state)
    r, c = a.all_cells()
    assert a.read_current(r, c, 0.1).tobytes() == b.read_current(r, c, 0.1).tobytes()
    with pytest.raises(ValueError, match="lacks _events"):
        b.import_state({k: v for k, v in state.items() if k != "_events"})


def test_written_out_gauss_hermite_rule_is_numpys() -> None:
    from sim_backend.device_model import _GH_NODES, _GH_WEIGHTS

    x, w = np.polynomial.hermite_e.hermegauss(16)
    # numpy takes the nodes from LAPACK eigenvalues (then one Newton step): another LAPACK build may differ by a
    # few ulps of the largest |x| ~ 6.6, about 1e-15; a weight ~ exp(-x^2/2) then moves by ~|x| times that,
    # relative. The bounds leave 100x room for both and still catch any wrong digit of the written constants
    # beyond the 13th.
    np.testing.assert_allclose(_GH_NODES, x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(_GH_WEIGHTS, w / w.sum(), rtol=1e-12, atol=0)
