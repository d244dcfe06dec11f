"""`rram plot` and hil.figures.runs on real (small, simulated) run files of every procedure."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

from hil.characterize import get_procedure
from hil.characterize.procedure import params_dict, run_procedure
from hil.characterize.runfile import create_run, read_run
from hil.cli import cli
from hil.figures import runs as plotting
from hil.hardware.board import Board

RUNS: dict[str, dict[str, Any]] = {
    "form": dict(cells="0:8,0:8"),
    "iv": dict(cells="0:1,0:2", cycles=2, points=11),
    "endurance": dict(cells="0:4,0:4", cycles=400, read_every=20),
    "retention": dict(cells="0:4,0:4", times=4, t_last=1e3),
    "levels": dict(cells="0:4,0:8", levels=4, read_times="1,10", gate_points=5, cal_cells=4),
    "read-noise": dict(cells="0:4,0:4", reads=40),
}
# Figures each plotter writes, by file-name suffix, and their pixel size (figsize x dpi).
FIGURES = {
    "form": {"form": (504, 1680)},
    "iv": {"iv": (528, 1320), "iv_cells": (336, 816)},
    "endurance": {"endurance": (528, 1320)},
    "retention": {"retention": (528, 1320)},
    "levels": {
        "levels_gate": (504, 720),
        "levels_cdf": (528, 1320),
        "levels_error": (504, 1320),
        "levels_relaxation": (528, 1320),
    },
    "read-noise": {"read_noise": (528, 1320), "read_noise_traces": (912, 1080)},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run file per procedure, all on the same simulated chip (formed first, as on a real bench)."""
    folder = tmp_path_factory.mktemp("runs")
    out: dict[str, Path] = {}
    with Board.open("sim://?seed=1&rows=16&cols=16") as board:
        for name, kw in RUNS.items():
            cls = get_procedure(name)
            out[name] = folder / f"{name}.h5"
            run_procedure(cls(cls.Params(**kw), board), out[name], quiet=True)
    return out


@pytest.fixture(scope="module")
def plotted(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    folder = tmp_path_factory.mktemp("png")
    return {name: plotting.plot_run(path, folder) for name, path in runs.items()}


def _check_png(path: Path, shape: tuple[int, int]) -> None:
    assert path.suffix == ".png" and path.stat().st_size > 8_000, path
    img = mpimg.imread(path)
    assert img.shape[:2] == shape, (path.name, img.shape)
    assert img[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.parametrize("name", list(RUNS))
def test_each_procedure_writes_its_figures(name: str, plotted: dict[str, list[Path]]) -> None:
    paths = plotted[name]
    expected = FIGURES[name]
    assert [p.name for p in paths] == [f"{name}_{kind}.png" for kind in expected]
    for p, shape in zip(paths, expected.values()):
        _check_png(p, shape)


def test_default_folder_is_the_run_files_folder(runs: dict[str, Path], tmp_path: Path) -> None:
    src = read_run(runs["endurance"])
    src.path = tmp_path / "chipA_endurance.h5"  # plotting names and places figures after the run path
    paths = plotting.plot_run(src)
    assert paths == [tmp_path / "chipA_endurance_endurance.png"]
    _check_png(paths[0], FIGURES["endurance"]["endurance"])


def _titles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Capture the suptitle of every figure saved."""
    seen: list[str] = []
    real = plotting._save

    def spy(fig: Figure, path: Path) -> Path:
        seen.append(fig.get_suptitle() or fig.axes[0].get_title())
        return real(fig, path)

    monkeypatch.setattr(plotting, "_save", spy)
    return seen


def _partial_copy(src: Path, dst: Path, keep: dict[str, int]) -> None:
    """A run file as an interrupted run leaves it: same tables, first `keep[table]` records, status running."""
    run = read_run(src)
    cls = get_procedure(run.procedure)
    with Board.open("sim://?seed=1&rows=16&cols=16") as board:
        proc = cls(cls.Params(**run.params), board)
        tables = proc.tables()
        assert params_dict(proc.p) == run.params
    r = create_run(dst, run.procedure, run.params, run.board, tables)
    with r as w:
        for name, n in keep.items():
            if n:
                w.append(name, run.data[name][:n])
    assert read_run(dst).status == "running"


def test_incomplete_run_with_data_is_plotted_and_marked(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = tmp_path / "endurance_part.h5"
    _partial_copy(runs["endurance"], part, {"endurance": 5})
    titles = _titles(monkeypatch)
    paths = plotting.plot_run(part, tmp_path)
    assert len(paths) == 1 and paths[0].stat().st_size > 8_000
    assert titles == ["endurance: endurance to 100 cycles - endurance_part.h5 (incomplete)"]


def test_levels_interrupted_after_gate_calibration_plots_what_exists(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = tmp_path / "levels_part.h5"
    _partial_copy(runs["levels"], part, {"gate_cal": 5, "open_loop": 10})
    titles = _titles(monkeypatch)
    paths = plotting.plot_run(part, tmp_path)
    assert [p.name for p in paths] == [f"levels_part_levels_{k}.png" for k in ("gate", "cdf", "error")]
    assert all(t.endswith("(incomplete)") for t in titles)


def test_complete_titles_carry_no_incomplete_mark(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    titles = _titles(monkeypatch)
    plotting.plot_run(runs["endurance"], tmp_path)
    assert titles == ["endurance: endurance to 400 cycles - endurance.h5"]


def test_empty_incomplete_run_is_a_one_line_error(runs: dict[str, Path], tmp_path: Path) -> None:
    part = tmp_path / "form_empty.h5"
    _partial_copy(runs["form"], part, {})
    with pytest.raises(ValueError, match=r"incomplete \(status 'running'\) form run holds no data") as exc:
        plotting.plot_run(part, tmp_path)
    assert "\n" not in str(exc.value)
    assert not list(tmp_path.glob("*.png"))


def test_retention_without_reads_yet_names_the_missing_table(runs: dict[str, Path], tmp_path: Path) -> None:
    part = tmp_path / "retention_part.h5"
    _partial_copy(runs["retention"], part, {"program": 16})
    with pytest.raises(ValueError, match=r"incomplete retention run has no records in table 'reads'"):
        plotting.plot_run(part, tmp_path)


def test_procedure_without_plots_is_a_one_line_error(tmp_path: Path) -> None:
    from hil.characterize.runfile import Table

    path = tmp_path / "odd.h5"
    r = create_run(path, "spectroscopy", {}, {}, {"x": Table({"v": ("f8", ())})})
    with r as w:
        w.append("x", v=1.0)
    with pytest.raises(ValueError, match=r"no plots for procedure 'spectroscopy' \(plots exist for: endurance, form"):
        plotting.plot_run(path, tmp_path)


def test_trace_cells_prefers_telegraph_cells_over_drift_white_noise_and_stuck_cells() -> None:
    rng = np.random.default_rng(3)
    n = 200
    g = 20.0 + 0.3 * rng.standard_normal((n, 9))  # columns 0, 5-8: white read noise only
    g[:, 1] += np.where((np.arange(n) // 25) % 2 == 0, 0.0, 1.2)  # telegraph steps, dwell 25 reads
    g[:, 2] += np.linspace(0.0, 3.0, n) ** 2  # smooth relaxation drift: removed by the detrend
    g[:, 3] = 79.36  # ADC saturated: constant
    g[:, 4] += np.where((np.arange(n) // 10) % 2 == 0, 0.0, 0.6)  # weaker, faster telegraph
    pick = plotting.trace_cells(g, n=3)
    sd = g.std(axis=0)
    typical = int(np.argsort(sd, kind="stable")[4])  # the median-sigma cell comes last
    assert typical in (0, 5, 6, 7, 8)
    assert pick == [1, 4, typical]


def test_lag1_autocorrelation_and_detrend_numbers() -> None:
    x = np.linspace(-1, 1, 50)
    quad = (2.0 - 3.0 * x + 5.0 * x**2)[:, None]
    np.testing.assert_allclose(plotting._detrend(quad), 0.0, atol=1e-10)
    alt = np.where(np.arange(50) % 2 == 0, 1.0, -1.0)[:, None]
    np.testing.assert_allclose(plotting._lag1_autocorr(alt), -49 / 50)
    steps = np.repeat([1.0, -1.0], 25)[:, None]
    np.testing.assert_allclose(plotting._lag1_autocorr(steps), 47 / 50)
    assert np.isnan(plotting._lag1_autocorr(np.zeros((5, 1))))[0]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_plots_several_runs_into_outdir_as_json(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "figs" / "new"
    res = CliRunner().invoke(cli, ["plot", str(runs["form"]), str(runs["iv"]), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    paths = json.loads(res.output)
    assert [Path(p).name for p in paths] == ["form_form.png", "iv_iv.png", "iv_iv_cells.png"]
    for p, shape in zip(paths, [*FIGURES["form"].values(), *FIGURES["iv"].values()]):
        assert Path(p).parent == out
        _check_png(Path(p), shape)


def test_cli_default_outdir_and_plain_output(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "copy_endurance.h5"
    run.write_bytes(runs["endurance"].read_bytes())
    res = CliRunner().invoke(cli, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [str(tmp_path / "copy_endurance_endurance.png")]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.h5", "run file {p} does not exist"),
        (lambda d: (d / "junk.h5").write_text("not hdf5") and d / "junk.h5", "{p} is not a readable HDF5 run file"),
    ],
)
def test_cli_errors_are_one_line(make: Callable[[Path], Path], message: str, tmp_path: Path) -> None:
    p = make(tmp_path)
    res = CliRunner().invoke(cli, ["plot", str(p)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + message.format(p=p)), res.output


def test_cli_checks_every_file_before_writing_any(runs: dict[str, Path], tmp_path: Path) -> None:
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    res = CliRunner().invoke(cli, ["plot", str(runs["form"]), str(other), "-o", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {other} is not an rram-hil run file"
    assert not list(tmp_path.glob("*.png"))


def test_cli_needs_a_run_file() -> None:
    res = CliRunner().invoke(cli, ["plot"])
    assert res.exit_code == 2 and "Missing argument 'RUNS...'" in res.output


# ------------------------------------------------------------------------------------------- RUNFILE.md


def test_runfile_md_documents_every_table_and_field(runs: dict[str, Path]) -> None:
    """The schema document names the format version and every table, field and dtype the procedures write."""
    import hil.characterize.runfile as runfile_module
    from hil.characterize.runfile import FORMAT_VERSION

    doc = (Path(runfile_module.__file__).parent / "RUNFILE.md").read_text()
    assert f"version {FORMAT_VERSION}" in doc.splitlines()[0]
    sections = doc.split("\n### ")
    for name, path in runs.items():
        section = next(s for s in sections if s.split(":")[0].strip() == f"6.{list(RUNS).index(name) + 1} `{name}`")
        run = read_run(path)
        assert run.procedure == name
        for key in run.params:
            assert f"`{key}`" in section, (name, key)
        for table, data in run.data.items():
            # the pulse ledger is every run's: documented once, in section 4a
            assert f"Table `{table}`" in section or f"table `{table}` (every run)" in doc, (name, table)
            for field in data.dtype.names or ():
                base, shape = data.dtype[field].base.name, data.dtype[field].shape
                # scalars are documented as (), [row, col] as (2,), per-cell / per-point arrays as (n,), (k,), (m,)
                tokens = (
                    ["()"] if not shape else ["(2,)"] if shape == (2,) and field == "cell" else ["(n,)", "(k,)", "(m,)"]
                )
                assert any(f"| `{field}` | {base} | {tok} |" in doc for tok in tokens), (
                    name,
                    table,
                    field,
                    base,
                    shape,
                )
