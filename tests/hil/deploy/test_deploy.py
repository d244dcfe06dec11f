"""Deployment: programming plans, tiled programming on the simulated board, resume, read-back accuracy."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import read_run
from hil.deploy.placement import build_plan, weights_from_conductances
from hil.deploy.plan import PlanError, load_plan, save_plan
from hil.deploy.procedure import DeployRun
from hil.deploy.readback import measured_matrices, verify_masks
from hil.hardware.board import Board
from models.noise.apply import clean_weights

G_MIN, G_MAX = 4e-6, 36e-6


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 4))


def _mask(model: nn.Module, frac: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) < frac for k, v in clean_weights(model).items()}


def test_plan_maps_tiles_and_inverts_exactly(tmp_path) -> None:
    model = _net()
    mask = _mask(model, 0.3)
    plan = build_plan(model, G_MIN, G_MAX, mask, rows=3, cols=4)  # network larger than the 3x4 array
    path = save_plan(plan, tmp_path / "p.h5")
    back = load_plan(path)
    # conv 3x1x2x2: fan_in 4, 6 device columns -> 2x2 tiles; linear 4x12: fan_in 12, 8 columns -> 4x2 tiles
    assert len(back.tiles) == 4 + 8
    for lp in back.layers:
        cover = np.zeros(lp.targets.shape, int)
        for t in back.tiles[back.tiles["layer"] == back.layers.index(lp)]:
            assert t["nr"] <= 3 and t["nc"] <= 4
            cover[t["r0"] : t["r0"] + t["nr"], t["c0"] : t["c0"] + t["nc"]] += 1
        assert (cover == 1).all()  # every device in exactly one tile
        assert lp.targets.min() >= G_MIN * (1 - 1e-6) and lp.targets.max() <= G_MAX * (1 + 1e-6)
        # one device of each pair sits at g_min (the sign lives on the pair)
        assert np.allclose(np.minimum(lp.targets[:, 0::2], lp.targets[:, 1::2]), G_MIN, rtol=1e-6, atol=0)
    rebuilt = weights_from_conductances(back, [lp.targets for lp in back.layers])
    for name, w in clean_weights(model).items():
        torch.testing.assert_close(rebuilt[name], w.detach(), rtol=1e-5, atol=1e-6)
    masks = verify_masks(back)
    for name, m in mask.items():
        assert torch.equal(masks[name], m)


def test_hand_computed_pair_mapping(tmp_path) -> None:
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[0.5, -1.0]])
    plan = build_plan(lin, 1e-6, 11e-6, {}, rows=8, cols=8)
    lp = plan.layers[0]
    # scale = max|W| = 1; W=0.5 -> G+ = 1 + 0.5*10 = 6 uS, G- = 1 uS; W=-1 -> G+ = 1, G- = 11 uS
    np.testing.assert_allclose(lp.targets * 1e6, [[6.0, 1.0], [1.0, 11.0]])
    assert not lp.verify.any()


def _write_garbage(path, data: bytes) -> None:
    path.write_bytes(data)


def test_bad_plan_files_are_refused_with_one_line_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_plan(tmp_path / "none.h5")
    _write_garbage(tmp_path / "junk.h5", b"not hdf5 at all" * 10)
    with pytest.raises(PlanError, match="not a readable HDF5 plan file"):
        load_plan(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(PlanError, match="not an rram-hil programming plan"):
        load_plan(tmp_path / "other.h5")
    good = save_plan(build_plan(_net(), G_MIN, G_MAX, {}, 3, 4), tmp_path / "good.h5")
    for edit, msg in [
        (lambda f: f.attrs.__setitem__("format_version", "9.0"), "newer than this software"),
        (
            lambda f: (
                f["layers/000"].__delitem__("targets"),
                f["layers/000"].create_dataset("targets", data=np.zeros((2, 2))),
            ),
            "corrupt",
        ),
        (lambda f: f["tiles"].__setitem__(0, (0, 0, 0, 99, 1)), "does not fit"),
        (lambda f: f.__delitem__("tiles"), "corrupt"),
    ]:
        bad = tmp_path / "bad.h5"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            edit(f)
        with pytest.raises(PlanError, match=msg):
            load_plan(bad)


def _program(url: str, plan_path, out, **kw) -> dict:
    with Board.open(url) as board:
        proc = DeployRun(DeployRun.Params(plan=str(plan_path), **kw), board)
        return run_procedure(proc, out, force=True, quiet=True).summary


def test_program_network_larger_than_the_array(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    torch.manual_seed(1)
    plan = build_plan(model, G_MIN, G_MAX, _mask(model, 0.4, seed=2), rows=8, cols=8)
    plan_path = save_plan(plan, tmp_path / "plan.h5")
    assert len(plan.tiles) == 2 * 2 + 1  # (10 x 12) -> 2x2 tiles, (6 x 6) -> 1 tile
    summary = _program("sim://?seed=5&rows=8&cols=8", plan_path, tmp_path / "deploy.h5", read_delay=1.0)
    run = read_run(tmp_path / "deploy.h5")
    t = run.data["tiles"]
    assert run.complete and len(t) == len(plan.tiles) and summary["tiles"] == len(plan.tiles)
    used = ~np.isnan(t["target"])
    ver = (t["verify"] > 0) & used
    assert summary["devices"] == plan.n_devices and summary["verified_devices"] == plan.n_verified
    assert (t["pulses"][used & ~ver] == 2).all()  # one RESET + one SET each
    healthy = ver & (t["status"] == 0)
    assert healthy.sum() >= 0.9 * ver.sum()
    # write-verify ends within tolerance of the target (on the board's own read)
    assert np.all(np.abs(t["g_prog"][healthy] - t["target"][healthy]) <= 0.8e-6 + 1e-9)
    # the read-back tracks the targets, apart from the chip's few defective cells
    err = np.abs(t["g_read"] - t["target"])[used]
    assert np.median(err) < 2.5e-6 and np.mean(err > 10e-6) < 0.05
    mats = measured_matrices(load_plan(plan_path), run)
    assert [m.shape for m in mats] == [lp.targets.shape for lp in plan.layers]


def test_board_reset_mid_programming_is_survived(tmp_path) -> None:
    model = nn.Linear(6, 4)
    plan_path = save_plan(build_plan(model, G_MIN, G_MAX, _mask(model, 0.5), rows=4, cols=4), tmp_path / "plan.h5")
    summary = _program(
        "sim://?seed=6&rows=4&cols=4&reset_after=6000", plan_path, tmp_path / "deploy.h5", read_delay=0.0
    )
    assert summary["board_resets"] == 1
    t = read_run(tmp_path / "deploy.h5").data["tiles"]
    assert sorted(t["tile"].tolist()) == list(range(len(load_plan(plan_path).tiles)))


def test_interrupted_deployment_resumes_to_the_same_records(tmp_path, monkeypatch) -> None:
    model = nn.Linear(6, 4)
    plan = build_plan(model, G_MIN, G_MAX, _mask(model, 0.5), rows=4, cols=4)
    plan_path = save_plan(plan, tmp_path / "plan.h5")
    out = tmp_path / "deploy.h5"
    original = DeployRun._program_tile
    calls = {"n": 0}

    def dies_on_third(self, ti, cal):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, ti, cal)

    monkeypatch.setattr(DeployRun, "_program_tile", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _program("sim://?seed=7&rows=4&cols=4", plan_path, out, read_delay=0.0)
    assert read_run(out).status == "running" and len(read_run(out).data["tiles"]) == 2
    monkeypatch.setattr(DeployRun, "_program_tile", original)
    with Board.open("sim://?seed=7&rows=4&cols=4") as board:
        proc = DeployRun(DeployRun.Params(plan=str(plan_path), read_delay=0.0), board)
        run_procedure(proc, out, resume=True, quiet=True)
    t = read_run(out).data["tiles"]
    assert read_run(out).complete and t["tile"].tolist() == list(range(len(plan.tiles)))


# ------------------------------------------------------------------------------ `rram program` and `rram swim curve`

SMALL_BOARD = "sim://?seed=3&rows=8&cols=8"
N_WEIGHTS = 64 * 4 + 4 * 10  # the weights of _model_file's network (biases stay off the array)


def _model_file(path, noise=None):
    """A digits MLP (64 -> 4 -> 10, untrained) in a model file whose noise spec is `noise`."""
    from models.architectures import build_model
    from models.checkpoint import model_record, save_checkpoint
    from models.config import TrainConfig
    from models.data import load_dataset

    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=8, hidden=[4])
    save_checkpoint(model_record(TrainConfig(model="mlp", model_kwargs={"hidden": [4]}, noise=noise), ds, model), path)
    return path


def _lognormal_profile(tmp_path, capsys, monkeypatch, *extra):
    from tests.helpers.cli import rram

    path = tmp_path / ("p10.h5" if extra else "p.h5")
    r = rram(capsys, monkeypatch, "profile", "new", "--lognormal", "0.2", "-o", str(path), *extra)
    assert r.code == 0, r.text
    return path


def test_program_names_what_supplies_the_missing_pulse_count(tmp_path, capsys, monkeypatch) -> None:
    from tests.helpers.cli import assert_one_line_error, rram

    model = _model_file(tmp_path / "m.pt")
    prof = _lognormal_profile(tmp_path, capsys, monkeypatch)
    out = tmp_path / "d.h5"
    r = rram(capsys, monkeypatch, "program", str(model), "--profile", str(prof), "--port", SMALL_BOARD, "-o", str(out))
    assert_one_line_error(
        r,
        f"{prof}: the profile has no mean pulse count for write-verified devices",
        "add --pulses-verified N to `rram profile new`",
        "fit the profile from a `rram characterize levels` run",
    )
    assert not out.exists() and not (tmp_path / "d.plan.h5").exists()
    prof10 = _lognormal_profile(tmp_path, capsys, monkeypatch, "--pulses-verified", "10")
    r = rram(
        capsys, monkeypatch, "program", str(model), "--profile", str(prof10), "--port", SMALL_BOARD, "-o", str(out)
    )
    assert r.code == 0, r.text
    stages = [ln for ln in r.err.splitlines() if ln.startswith("planning: ")]
    assert stages[0].startswith(f"planning: sensitivity of {N_WEIGHTS} weights") and "swim: marking 10.0%" in stages[1]
    assert "\r" not in r.text
    assert read_run(out).complete and load_plan(tmp_path / "d.plan.h5").n_verified == 2 * round(0.1 * N_WEIGHTS)
    # not on a terminal: one line per stage of the programming run too (forming, each tile), on stderr only
    plan = load_plan(tmp_path / "d.plan.h5")
    prog = [ln.split(": ", 1)[1] for ln in r.err.splitlines() if ln.startswith("program: ")]
    assert (
        prog[0].startswith("start, ") and prog[1].startswith("forming ") and prog[1].endswith(" cells of the used area")
    )
    tiles = [ln for ln in prog if ln.startswith("tile ")]
    assert [t.split(":")[0] for t in tiles] == [f"tile {i + 1}/{len(plan.tiles)}" for i in range(len(plan.tiles))]
    staged = ("planning: ", "program: start", "program: forming", "program: tile ")
    assert not [ln for ln in r.out.splitlines() if ln.startswith(staged)]  # stdout keeps the summary alone


def test_program_refuses_a_bit_sliced_model(tmp_path, capsys, monkeypatch) -> None:
    from tests.helpers.cli import assert_one_line_error, rram

    prof10 = _lognormal_profile(tmp_path, capsys, monkeypatch, "--pulses-verified", "10")
    spec = {"family": "profile", "path": str(prof10), "t_s": 0.0, "mapping": "bitsliced", "bits": 8}
    model = _model_file(tmp_path / "m.pt", spec)
    r = rram(capsys, monkeypatch, "program", str(model), "--profile", str(prof10), "--port", SMALL_BOARD, "-o", "d.h5")
    assert_one_line_error(r, "trained with bit-sliced 8-bit weights", "one analog conductance pair", "--mapping analog")


def test_swim_curve_maps_as_the_model_file_says(tmp_path, capsys, monkeypatch) -> None:
    """Write cycles count 2 devices per weight for analog pairs, 2 x (bits / bits per device) bit-sliced (each with
    its expected touch-ups)."""
    from models.swim.planning import Reverify
    from tests.helpers.cli import assert_one_line_error, rram

    prof = _lognormal_profile(tmp_path, capsys, monkeypatch)  # 4 levels: 2 bits per device
    prof10 = _lognormal_profile(tmp_path, capsys, monkeypatch, "--pulses-verified", "10")
    args = ["--fractions", "0,1", "--methods", "magnitude", "--mc", "2", "--sens-samples", "20"]
    analog = _model_file(tmp_path / "a.pt")
    r = rram(capsys, monkeypatch, "swim", "curve", str(analog), "--profile", str(prof), *args)
    assert_one_line_error(r, "add --pulses-verified N to `rram profile new`")
    for name, spec, devices in (
        ("a.pt", None, 2),
        ("b.pt", {"family": "profile", "path": str(prof10), "mapping": "bitsliced", "bits": 8}, 2 * 4),
    ):
        model = _model_file(tmp_path / name, spec)
        r = rram(capsys, monkeypatch, "swim", "curve", str(model), "--profile", str(prof10), *args, "--json")
        assert r.code == 0, r.text
        full = next(p for p in json.loads(r.out)["points"] if p["fraction"] == 1)
        # every device write-verified (10 pulses), plus the touch-ups the default re-verify rounds expect of
        # them at 10 pulses each (models.swim.planning.Reverify: at most one per device and round)
        assert 0 < full["touchups"] <= Reverify().rounds * devices * N_WEIGHTS
        assert full["cycles"] == pytest.approx(devices * N_WEIGHTS * 10.0 + 10.0 * full["touchups"], rel=1e-12)
        assert full["cycles_norm"] == pytest.approx(1.0, rel=1e-12)
    r = rram(capsys, monkeypatch, "swim", "curve", str(tmp_path / "b.pt"), "--profile", str(prof10), *args)
    assert r.code == 0, r.text
    assert [ln.split(": ", 1)[1] for ln in r.err.splitlines() if ln.startswith("swim curve: ")][:2] == [
        "bit-sliced 8-bit weights on 2-bit devices; sensitivity over 20 samples",
        "magnitude: 2 fractions x 2 draws",
    ]
