"""`rram profile` new/show/plot/export-aihwkit through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration import synthetic as syn
from calibration.fit import fit_profile
from calibration.profile import load_profile, save_profile
from hil.cli import cli
from hil.cli.profile import parse_conductance


def _run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "args, family, key, value",
    [
        (["--lognormal", "0.3"], "lognormal", "s", 0.3),
        (["--additive", "0.05"], "additive", "eta", 0.05),
        (["--sigma", "0.1"], "gaussian", "sigma", 0.1),
        (["--state-dependent", "0.05", "--t", "6"], "state_dependent", "t", 6.0),
        (["--ibm-reram", "1d"], "ibm_reram", "time", "1d"),
    ],
)
def test_new_writes_each_family(tmp_path: Path, args: list[str], family: str, key: str, value: object) -> None:
    out = tmp_path / "p.h5"
    r = _run(
        "profile", "new", *args, "--g-min", "2u", "--g-max", "50uS", "--levels", "8", "--board-id", "B1", "-o", str(out)
    )
    assert r.exit_code == 0, r.output
    p = load_profile(out)
    assert p.family == family and p.family_params[key] == value
    assert p.g_min == 2e-6 and p.g_max == 50e-6 and p.n_levels == 8 and p.bits_per_device == 3
    assert p.provenance.board_id == "B1"


def test_new_refuses_overwrite_and_bad_choices(tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    assert _run("profile", "new", "--sigma", "0.1", "-o", str(out)).exit_code == 0
    r = _run("profile", "new", "--sigma", "0.2", "-o", str(out))
    assert r.exit_code == 1 and "exists" in r.output and "--force" in r.output
    assert load_profile(out).family_params["sigma"] == 0.1
    assert _run("profile", "new", "--sigma", "0.2", "-o", str(out), "--force").exit_code == 0
    assert load_profile(out).family_params["sigma"] == 0.2
    r = _run("profile", "new", "--sigma", "0.2", "--lognormal", "0.1", "-o", str(tmp_path / "q.h5"))
    assert r.exit_code == 1 and "exactly one" in r.output
    r = _run("profile", "new", "--lognormal", "-0.1", "-o", str(tmp_path / "q.h5"))
    assert r.exit_code == 1 and ">= 0" in r.output and len(r.output.strip().splitlines()) == 1
    r = _run("profile", "new", "--sigma", "0.1", "--g-max", "forty", "-o", str(tmp_path / "q.h5"))
    assert r.exit_code == 2 and "not a conductance" in r.output


def test_parse_conductance() -> None:
    assert parse_conductance("40u") == 40e-6
    assert parse_conductance("40uS") == 40e-6
    assert parse_conductance("4e-5") == 4e-5
    assert parse_conductance("2.5 mS") == 2.5e-3


@pytest.fixture(scope="module")
def measured_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    levels = np.linspace(2e-6, 40e-6, 8)
    p = fit_profile(
        open_loop=syn.programming(rng, levels, 300),
        verified=syn.programming(rng, levels, 300, "additive", eta=0.01, verified=True, mean_pulses=4),
        relaxation=syn.relaxation(
            rng,
            levels[::2],
            np.logspace(0, 4, 5),
            100,
            np.zeros(4),
            np.full(4, -0.2e-6),
            np.full(4, 0.5e-6),
            np.full(4, 0.3e-6),
        ),
        read_noise=syn.reads(rng, levels, 20, 40, np.array([0.2e-6]), rtn_fraction=0.1, rtn_amplitude_rel=0.2)[0],
        endurance=syn.endurance(rng, 200, np.array([1, 10, 100, 1000, 10000]), 1.5, 3e3, stuck_hrs=0.05),
        spatial=syn.spatial(rng, (4, 4), 40, rng.standard_normal((16, 2)) * 1e-6, 0.2e-6),
    )
    return save_profile(p, tmp_path_factory.mktemp("prof") / "measured.h5")


def test_show_table_and_json(measured_file: Path) -> None:
    r = _run("profile", "show", str(measured_file))
    assert r.exit_code == 0
    for word in ("open_loop", "verified", "families", "relaxation", "read noise", "RTN", "Weibull", "spatial"):
        assert word in r.output
    data = json.loads(_run("profile", "show", str(measured_file), "--json").output)
    p = load_profile(measured_file)
    assert data["mapping"]["g_max"] == p.g_max
    assert data["open_loop"]["sigma_coeffs"] == p.open_loop.sigma_poly.coeffs.tolist()
    assert data["best_family_aic"] == p.best_family()
    assert data["endurance"]["weibull_shape"] == p.endurance.weibull_shape


def test_plot_writes_nontrivial_pngs(measured_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    r = _run("profile", "plot", str(measured_file), "-o", str(out))
    assert r.exit_code == 0
    names = {f.name for f in out.iterdir()}
    assert names == {"sigma_vs_g.png", "relaxation.png", "families_cdf.png", "endurance.png", "spatial.png"}
    for f in out.iterdir():
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15000
    import matplotlib.image as mpimg

    img = mpimg.imread(out / "sigma_vs_g.png")
    assert img.std() > 0.05  # not a blank canvas


def test_plot_paper_profile(tmp_path: Path) -> None:
    p = tmp_path / "p.h5"
    _run("profile", "new", "--ibm-reram", "1s", "-o", str(p))
    r = _run("profile", "plot", str(p), "-o", str(tmp_path / "f"))
    assert r.exit_code == 0
    assert {f.name for f in (tmp_path / "f").iterdir()} == {"sigma_vs_g.png", "relaxation.png"}


def test_export_aihwkit(tmp_path: Path) -> None:
    p = tmp_path / "p.h5"
    _run("profile", "new", "--ibm-reram", "1s", "-o", str(p))
    out = tmp_path / "c.json"
    r = _run("profile", "export-aihwkit", str(p), "-o", str(out))
    assert r.exit_code == 0
    data = json.loads(out.read_text())
    assert data["PCMLikeNoiseModel"]["prog_coeff"] == [0.348, 16.030, -43.853, 45.393, -16.815]
    assert _run("profile", "export-aihwkit", str(p), "-o", str(out)).exit_code == 1
    assert _run("profile", "export-aihwkit", str(p), "-o", str(out), "--verified", "--force").exit_code == 0


def test_bad_file_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    for cmd in (
        ["show", str(bad)],
        ["plot", str(bad), "-o", str(tmp_path / "x")],
        ["export-aihwkit", str(bad), "-o", str(tmp_path / "c.json")],
    ):
        r = _run("profile", *cmd)
        assert r.exit_code == 1
        assert r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1
        assert "corrupt or truncated" in r.output


def test_new_states_the_pulses_deployment_needs(tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    r = _run("profile", "new", "--lognormal", "0.2", "--pulses-verified", "12.5", "-o", str(out))
    assert r.exit_code == 0, r.output
    p = load_profile(out)
    assert p.pulses_per_device(True) == 12.5 and p.pulses_per_device(False) == 1.0
    assert "note:" not in r.output
    bare = tmp_path / "bare.h5"
    r = _run("profile", "new", "--lognormal", "0.2", "-o", str(bare))
    assert r.exit_code == 0 and "no --pulses-verified N given" in r.output
    r = _run("profile", "new", "--lognormal", "0.2", "--pulses-verified", "0", "-o", str(tmp_path / "zero.h5"))
    assert r.exit_code == 2 and "--pulses-verified" in r.output and not (tmp_path / "zero.h5").exists()
