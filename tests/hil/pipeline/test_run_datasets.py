"""Run files -> calibration datasets (hil.pipeline.run_datasets) and the `rram fit` command, on small real runs of the simulator."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from calibration.noise_terms import ProgrammingModel
from calibration.profile import NoiseProfile, load_profile
from hil.characterize import get_procedure
from hil.characterize.multilevel import gate_for
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import RunData, read_run
from hil.cli import cli, main
from hil.hardware.board import Board, PulseMeasurement, WriteVerifyOutcome
from hil.pipeline.run_datasets import collect_datasets, fit_runs

SEED, ROWS, COLS = 5, 8, 8
LEVELS = dict(levels=4, g_lo=5e-6, g_hi=35e-6, read_times="1,10", gate_points=5, cal_cells=4, gate_lo=0.8)


def _run(board: Board, name: str, out: Path, **params: object) -> Path:
    cls = get_procedure(name)
    run_procedure(cls(cls.Params(**params), board), out, quiet=True)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small runs of one 8x8 chip: rows 0-5 formed directly (set-up), rows 6-7 left pristine (open cells)."""
    d = tmp_path_factory.mktemp("fit_runs")
    with Board.open(f"sim://?seed={SEED}&rows={ROWS}&cols={COLS}") as board:
        a = board.link.engine.array  # type: ignore[attr-defined]
        rr, cc = np.meshgrid(np.arange(6), np.arange(COLS), indexing="ij")
        a.form(rr.ravel(), cc.ravel(), 4.0, 1000, 1.0)
        out = {
            "form": _run(
                board, "form", d / "form.h5", cells="6:8,0:2", v_stop=2.0
            ),  # never reaches forming: no data to fit
            "levels": _run(board, "levels", d / "levels.h5", cells="0:4,0:8", **LEVELS),
            "levels2": _run(board, "levels", d / "levels2.h5", cells="4:6,0:8", **LEVELS),
            "read-noise": _run(board, "read-noise", d / "rn.h5", cells="0:4,0:8", reads=12, program=False),
            "read-noise2": _run(board, "read-noise", d / "rn2.h5", cells="4:6,0:8", reads=8, program=False),
            "retention": _run(board, "retention", d / "ret.h5", cells="0:4,0:8", times=3, t_last=100.0),
            "retention2": _run(board, "retention", d / "ret2.h5", cells="0:4,0:8", times=3, t_last=100.0),
            "endurance": _run(
                board, "endurance", d / "end.h5", cells="4:8,0:8", cycles=100, read_every=10, skip_unformed=True
            ),
            "endurance2": _run(board, "endurance", d / "end2.h5", cells="0:2,0:8", cycles=60, read_every=10),
        }
        out["truth"] = d / "truth.npz"  # rows 4-7: open (never formed / stuck open) and shorted cells
        np.savez(out["truth"], open=~(a.formed | a.stuck_lrs)[32:], short=a.stuck_lrs[32:])
    return out


# ------------------------------------------------------------------------------------------- adapter
def test_levels_relaxation_comes_from_open_loop_reads(runs: dict[str, Path]) -> None:
    """Every open-loop cell restarts its clock (full RESET + SET), so its reads give the relaxation rows:
    one delay per block read, healthy cells only; write-verify reads are not used for relaxation."""
    run = read_run(runs["levels"])
    ds = collect_datasets([run])
    d = run.data
    ok = d["verified"]["status"] == 0
    rel = ds.relaxation
    assert rel is not None and rel.g.size == 2 * ok.sum()
    delays = np.unique(rel.t_s)
    expect = np.median(d["open_loop_reads"]["t"][:, None] - d["open_loop"]["t"][None, ok], axis=1)
    assert np.allclose(delays, expect) and np.allclose(delays, [1.0, 10.0], rtol=0.02)
    assert np.array_equal(rel.g[: ok.sum()], d["open_loop_reads"]["g"][0][ok])
    assert ds.open_loop.t_read_s == pytest.approx(delays[0], rel=0.01)
    assert np.array_equal(ds.verified.g, d["verified_reads"]["g"][0][ok])  # programming error at the first read
    assert ds.used["relaxation"] == [str(runs["levels"])]


@dataclass
class Recorded:
    """A levels run on a fresh chip with what the host did and what the chip held (ground truth)."""

    path: Path
    set_gates: list[tuple[int, int, float]]  # every SET pulse the host sent: (row, col, gate V), in order
    t_prog: np.ndarray  # each region cell's relaxation clock start (s) on the chip after the run, row-major
    t_wv_start: float  # board time (s) the write-verify phase began


def _models(prof: NoiseProfile) -> tuple[ProgrammingModel, ProgrammingModel]:
    """The profile's open-loop and write-verify models (a levels run gives both)."""
    assert prof.open_loop is not None and prof.verified is not None
    return prof.open_loop, prof.verified


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """levels on 128 cells of a 16x16 chip (4 levels, 8-gate calibration on 8 cells), every SET gate recorded."""
    path = tmp_path_factory.mktemp("recorded") / "levels.h5"
    gates: list[tuple[int, int, float]] = []
    with Board.open("sim://?seed=3&rows=16&cols=16&persist=0") as board:
        a = board.link.engine.array  # type: ignore[attr-defined]
        a.form(*a.all_cells(), 4.0, 1000, 1.0)  # set-up: formed directly, not under test
        set_pulse, write_verify = board.set_pulse, board.write_verify
        started: list[float] = []

        def record_set(row: int, col: int, v: float, width_ns: int, v_gate: float) -> PulseMeasurement:
            gates.append((row, col, v_gate))
            return set_pulse(row, col, v, width_ns, v_gate)

        def record_wv(*args: Any, **kwargs: Any) -> WriteVerifyOutcome:
            started.append(a.time_s)
            return write_verify(*args, **kwargs)

        # the procedures call the board's methods: record on the way
        board.set_pulse = record_set  # type: ignore[method-assign]
        board.write_verify = record_wv  # type: ignore[method-assign]
        params = dict(LEVELS, gate_points=8, cal_cells=8, reverify=0)  # write-verify once: the F-test's model
        _run(board, "levels", path, cells="0:8,0:16", **params)
        rr, cc = np.meshgrid(np.arange(8), np.arange(16), indexing="ij")
        t_prog = a._t_prog[a._index(rr.ravel(), cc.ravel())].copy()
    return Recorded(path, gates, t_prog, min(started))


def test_open_loop_law_keeps_the_gate_map_it_was_measured_with(recorded: Recorded, runs: dict[str, Path]) -> None:
    """The open-loop law's mean error is its own gate calibration's error, so the profile keeps that calibration:
    gate_for on the stored map gives, to the last bit, the gate of every open-loop SET the levels run sent.
    Runs pooled with different maps (other calibration cells) keep none: no single map made their law."""
    ol_model, wv_model = _models(fit_runs([recorded.path])[0])
    d = read_run(recorded.path).data
    m = ol_model.gate_map
    assert m is not None and wv_model.gate_map is None
    assert np.array_equal(m.gate_v, d["gate_cal"]["gate"]) and np.array_equal(m.g_s, d["gate_cal"]["g"])
    ol = d["open_loop"]
    pulsed = ol["pulses"] > 0
    sent = recorded.set_gates[-int(pulsed.sum()) :]  # the open-loop SETs come after the calibration's
    assert [(r, c) for r, c, _ in sent] == [tuple(x) for x in ol["cell"][pulsed]]
    expect = gate_for(ol["target"][pulsed], m.gate_v, m.g_s)
    assert np.array_equal(np.array([g for _, _, g in sent]), expect)
    both = _models(fit_runs([runs["levels"], runs["levels2"]])[0])[0]
    one = _models(fit_runs([runs["levels"]])[0])[0]
    assert both.gate_map is None and one.gate_map is not None


def test_write_verify_law_leaves_out_the_cells_it_never_pulsed(recorded: Recorded) -> None:
    """A levels run write-verifies cells just programmed open loop to the same target, so some start in tolerance
    and get no pulse. The chip shows they were not written: their relaxation clock started before the
    write-verify (ground truth). They count in the pulses per device (their 0 included) but not in the error law,
    whose cells' spread at the first read is larger (their relaxation restarted): one-sided F-test, p < 0.01."""
    run = read_run(recorded.path)
    v = run.data["verified"]
    ok = v["status"] == 0
    idle = ok & (v["pulses"] == 0)
    assert idle.sum() >= 10 and (ok & ~idle).sum() >= 50  # the scenario has both kinds, in numbers
    assert np.all(recorded.t_prog[idle] < recorded.t_wv_start)
    ds = collect_datasets([run]).verified
    assert ds is not None and ds.written is not None
    assert np.array_equal(ds.written, v["pulses"][ok] > 0) and ds.g.size == ok.sum()
    law = _models(fit_runs([recorded.path])[0])[1]
    assert law.table.count.sum() == (ok & ~idle).sum()
    assert law.pulses_mean == pytest.approx(v["pulses"][ok].mean(), rel=1e-12)
    err = ds.g - ds.target_g
    z = np.zeros_like(err)  # each level's errors over that level's sd: idle cells sit more at some levels
    for lv in np.unique(ds.target_g):
        at = ds.target_g == lv
        z[at] = (err[at] - err[at].mean()) / err[at].std(ddof=1)
    z_w, z_i = z[ds.written], z[~ds.written]
    f = np.var(z_w, ddof=1) / np.var(z_i, ddof=1)
    assert stats.f.sf(f, z_w.size - 1, z_i.size - 1) < 0.01, f


def test_retention_relaxation_skips_cells_write_verify_left_alone(runs: dict[str, Path]) -> None:
    """A second retention run on the same cells finds many already within tolerance (0 pulses): their
    clock started in the first run, so only the cells it pulsed give relaxation rows."""
    first, second = (read_run(runs[k]) for k in ("retention", "retention2"))
    prog = second.data["program"]
    pulsed = (prog["status"] == 0) & (prog["pulses"] > 0)
    assert 0 < pulsed.sum() < (prog["status"] == 0).sum()  # the scenario has both kinds of cells
    ds = collect_datasets([second])
    assert ds.relaxation.g.size == len(second.data["reads"]) * pulsed.sum()
    ds1 = collect_datasets([first])
    p1 = first.data["program"]
    assert ds1.relaxation.g.size == len(first.data["reads"]) * int(((p1["status"] == 0) & (p1["pulses"] > 0)).sum())


def test_endurance_open_cells_are_stuck_from_the_first_read(runs: dict[str, Path]) -> None:
    """Pristine cells read noise around 0 S: judged on reads floored at the noise floor they fail at the
    first read (stuck), instead of at a random late cycle; reads <= 0 S become NaN (no log).
    Shorted cells are stuck from the first read too; every other cell survives 100 cycles."""
    run = read_run(runs["endurance"])
    ds = collect_datasets([run]).endurance
    truth = np.load(runs["truth"])
    open_cells, dead = truth["open"], truth["open"] | truth["short"]
    assert open_cells.sum() >= 16 and truth["short"].any()
    assert np.all(ds.failed[dead]) and np.all(ds.cycles_to_failure[dead] == ds.cycles[0])
    assert not ds.failed[~dead].any()
    raw = run.data["endurance"]["lrs"].T
    assert np.array_equal(np.isnan(ds.g_lrs), raw <= 0) and (raw <= 0).any()
    prof, _ = fit_runs([runs["endurance"]], g_min=1e-6, g_max=40e-6)
    assert prof.endurance.stuck_hrs_fraction == pytest.approx(open_cells.mean())
    assert prof.endurance.stuck_lrs_fraction == pytest.approx(truth["short"].mean())
    assert prof.endurance.n_censored == int((~dead).sum())


def _with_endurance(run: RunData, lrs: np.ndarray, hrs: np.ndarray) -> RunData:
    """The run with its endurance table replaced by these (cells, reads) conductances, read every 10 cycles."""
    n, k = lrs.shape
    e = np.zeros(k, dtype=[("cycle", "i8"), ("t", "f8"), ("lrs", "f8", (n,)), ("hrs", "f8", (n,))])
    e["cycle"], e["lrs"], e["hrs"] = 10 * np.arange(1, k + 1), lrs.T, hrs.T
    return replace(run, data={"endurance": e})


def test_endurance_window_closed_only_at_the_last_read_is_censored(runs: dict[str, Path]) -> None:
    """One closed window at the very end is one noisy read, not a failure; two in a row are a failure."""
    run = read_run(runs["endurance"])
    lrs = np.full((3, 5), 30e-6)
    hrs = np.full((3, 5), 3e-6)
    hrs[0, -1] = 20e-6  # closes at the last read only
    hrs[1, -2:] = 20e-6  # closes for the last two reads
    ds = collect_datasets([_with_endurance(run, lrs, hrs)]).endurance
    assert ds.failed.tolist() == [False, True, False]
    assert ds.cycles_to_failure.tolist() == [50.0, 40.0, 50.0]


def test_same_kind_runs_are_pooled(runs: dict[str, Path]) -> None:
    """Two levels runs pool their cells (defects counted over both); two read-noise runs keep the
    smaller number of reads; endurance runs with different read cycles are refused in one line."""
    both = [read_run(runs[k]) for k in ("levels", "levels2")]
    parts = [collect_datasets([r]) for r in both]
    ds = collect_datasets(both)
    assert ds.open_loop.g.size == sum(p.open_loop.g.size for p in parts)
    assert ds.verified.g.size == sum(p.verified.g.size for p in parts)
    assert ds.relaxation.g.size == sum(p.relaxation.g.size for p in parts)
    bad = sum(int((r.data["verified"]["status"] != 0).sum()) for r in both)
    assert bad > 0 and sum(ds.defects) == pytest.approx(bad / sum(len(r.data["verified"]) for r in both))
    rn = collect_datasets([read_run(runs["read-noise"]), read_run(runs["read-noise2"])]).read_noise
    assert rn.g_reads.shape == (48, 8) and rn.target_g is None
    with pytest.raises(ValueError, match="endurance runs read at different cycles"):
        collect_datasets([read_run(runs["endurance"]), read_run(runs["endurance2"])])


def test_defects_split_by_where_the_cell_reads(runs: dict[str, Path]) -> None:
    """Write-verify records no reading for cells it never pulsed; the first block read after it decides
    whether a bad cell sits above its target (stuck high) or below (stuck low)."""
    run = read_run(runs["levels2"])
    d = run.data
    bad = d["verified"]["status"] != 0
    g = d["verified_reads"]["g"][0][: len(bad)]
    ds = collect_datasets([run])
    high = int((bad & (g > d["verified"]["target"])).sum())
    assert high >= 1 and bad.sum() > high  # a shorted cell and open ones in this region
    assert ds.defects == (high / len(bad), (int(bad.sum()) - high) / len(bad))


# ------------------------------------------------------------------------------------------- rram fit
def _cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args))


def _main(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """The real console entry point (one-line errors); returns (exit code, stderr)."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["rram", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def test_rram_fit_writes_a_profile_that_profile_show_reads(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    files = [str(runs[k]) for k in ("levels", "read-noise", "endurance")]
    r = _cli("fit", *files, "-o", str(out))
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output and "open_loop" in r.output and "endurance" in r.output
    expect, _ = fit_runs(files)
    prof = load_profile(out)
    assert np.allclose(prof.programming_sigma(prof.levels_g), expect.programming_sigma(expect.levels_g))
    assert prof.stuck_fractions == expect.stuck_fractions
    show = _cli("profile", "show", "--json", str(out))
    assert show.exit_code == 0, show.output
    js = json.loads(show.output)
    assert js["mapping"]["g_min"] == pytest.approx(5e-6) and js["mapping"]["n_levels"] == 4
    assert js["open_loop"]["sigma"] == pytest.approx(prof.open_loop.table.sigma.tolist())
    assert sorted(Path(f).name for f in js["provenance"]["run_files"]) == sorted(Path(f).name for f in files)
    # an existing profile is refused without --force, replaced with it
    again = _cli("fit", str(runs["levels"]), "-o", str(out))
    assert again.exit_code != 0 and "already exists (use --force" in again.output and "Traceback" not in again.output
    assert load_profile(out).read_noise is not None  # untouched
    forced = _cli("fit", str(runs["levels"]), "-o", str(out), "--force", "--json", "--levels", "4", "--g-max", "40uS")
    assert forced.exit_code == 0, forced.output
    js = json.loads(forced.output.splitlines()[-1])
    assert js["datasets"]["open_loop"] == [str(runs["levels"])] and js["mapping"]["g_max"] == pytest.approx(40e-6)
    assert load_profile(out).read_noise is None


@pytest.mark.parametrize("kind", ["missing", "not-a-run", "no-data", "profile-as-run"])
def test_rram_fit_one_line_errors(
    kind: str, runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "p.h5"
    if kind == "missing":
        arg, fragment = str(tmp_path / "nope.h5"), "does not exist"
    elif kind == "not-a-run":
        arg, fragment = str(tmp_path / "notes.h5"), "not a readable HDF5 run file"
        Path(arg).write_text("hello")
    elif kind == "no-data":
        arg, fragment = str(runs["form"]), "nothing to fit in these runs (form)"
    else:
        _cli("fit", str(runs["levels"]), "-o", str(out))
        arg, fragment, out = str(out), "", tmp_path / "q.h5"
    code, err = _main(capsys, monkeypatch, "fit", arg, "-o", str(out))
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("fitting ")]
    assert code != 0 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], err
    assert not out.exists()


def test_form_run_gives_the_defect_model(tmp_path) -> None:
    """Shorted cells (conducting before forming) and unformable cells of a form run become the profile's defects."""
    from hil.characterize import get_procedure
    from hil.characterize.procedure import run_procedure
    from hil.hardware.board import Board
    from hil.pipeline.run_datasets import fit_runs

    # Forming is ~90 % of this test's time, so the ramp is coarse: from 2.6 V (3.3 sigma below the forming voltage
    # 3.0 +- 0.12 V; here the formable cells need 2-5 pulses, none forms at the first) in 0.2 V steps to 4.4 V.
    # What the defect model reads does not depend on it: a shorted cell conducts before any pulse, an unformable
    # one never forms at any voltage (same 7 shorted and 18 open cells, same reads of the shorted ones, as the
    # default 2.0 V / 0.1 V ramp).
    form = dict(cells="0:32,0:32", v_start=2.6, v_step=0.2)
    with Board.open("sim://?seed=4&rows=32&cols=32") as board:
        runs = []
        for name, kw in (("form", form), ("levels", dict(cells="0:8,0:8", read_times="1,10"))):
            cls = get_procedure(name)
            runs.append(tmp_path / f"{name}.h5")
            run_procedure(cls(cls.Params(**kw), board), runs[-1], quiet=True)
        arr = board.link.engine.array
        shorted = int(arr.stuck_start_lrs.sum())
        open_cells = int((~arr.can_form | arr.stuck_start_hrs).sum())
        short_rows, short_cols = np.divmod(np.flatnonzero(arr.stuck_start_lrs), 32)
        g_shorted = arr.conductance(short_rows, short_cols)  # noiseless: a stuck cell does not move
        rtn_dip = float(np.max(arr.rtn_amp[arr.stuck_start_lrs] * g_shorted))  # deepest telegraph dip of one
        white = arr.params.read_noise_frac * arr.params.g_max  # white read noise sd, as a conductance at v_read
    assert shorted > 0 and open_cells > 0  # the chip has both kinds of defect: the fractions are not vacuous
    prof, ds = fit_runs(runs)
    assert "defects" in ds.used
    assert prof.stuck_fractions[0] == pytest.approx(shorted / 1024)
    assert prof.stuck_fractions[1] == pytest.approx(open_cells / 1024, abs=2 / 1024)
    g_high, g_low = prof.stuck_conductances
    # The model's stuck-high conductance is the median read of the shorted cells. A median moves no more than
    # the largest error of its values: each read is off by its white noise (within 5 sd, all 7 cells but with
    # probability 4e-6) and at most its cell's telegraph dip.
    assert abs(g_high - np.median(g_shorted)) <= 5 * white + rtn_dip
    assert g_high > prof.g_max  # and it lies above the window
    assert g_low < prof.g_min
