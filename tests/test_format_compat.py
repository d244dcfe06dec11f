"""Files written by an earlier release (commit f71d6ec, tests/data/compat/) load today, and today's writers keep their layout.

For each of the six formats: the old file loads with today's reader and its content is checked, and a
file written now has the same HDF5 layout (groups, datasets, attribute names, dtypes, chunking,
compression) as the old one; timestamps and software versions differ only in value.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from calibration.profile import NoiseProfile, load_profile, save_profile
from hil.characterize.form import Form, FormParams
from hil.characterize.procedure import run_procedure
from hil.characterize.runfile import read_run
from hil.deploy.placement import weights_from_conductances
from hil.deploy.plan import load_plan, save_plan
from hil.hardware.board import Board
from hil.hardware.readpath import ReadPathCalibration
from models.checkpoint import load_checkpoint, load_model, model_record, save_checkpoint
from models.config import TrainConfig
from models.noise.apply import clean_weights
from sim_backend.device_model import RRAMArray
from sim_backend.device_params import DeviceParams
from sim_backend.ground_truth import load_ground_truth, params_from_ground_truth
from sim_backend.read_chain import ReadChain

COMPAT = Path(__file__).parent / "data" / "compat"


def _dtype(dt: np.dtype) -> str:
    s = h5py.check_string_dtype(dt)
    return f"str[{s.encoding}, {s.length}]" if s else str(dt)


def layout(path: Path) -> dict[str, tuple]:
    """Every group, dataset and attribute of an HDF5 file with its kind, dtype and storage (not its values)."""
    out: dict[str, tuple] = {}

    def attrs(obj: h5py.HLObject, name: str) -> None:
        for key in obj.attrs:
            a = obj.attrs.get_id(key)
            out[f"{name}@{key}"] = ("attr", _dtype(a.dtype), a.shape)

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            unlimited = tuple(m is None for m in obj.maxshape)
            out[name] = ("dataset", _dtype(obj.dtype), obj.ndim, unlimited, obj.chunks is not None, obj.compression)
        else:
            out[name] = ("group",)
        attrs(obj, name)

    with h5py.File(path, "r") as f:
        attrs(f, "")
        f.visititems(visit)
    return out


def assert_same_layout(old: Path, new: Path, ignore: frozenset[str] = frozenset()) -> None:
    """Same groups, datasets and attributes (kinds, dtypes, storage), but for the `ignore`d keys of `layout`."""
    a, b = ({k: v for k, v in layout(p).items() if k not in ignore} for p in (old, new))
    assert a.keys() == b.keys(), (
        f"only in the old file: {sorted(a.keys() - b.keys())}; only new: {sorted(b.keys() - a.keys())}"
    )
    assert {k: v for k, v in a.items() if v != b[k]} == {}, {k: (v, b[k]) for k, v in a.items() if v != b[k]}
    with h5py.File(old, "r") as f, h5py.File(new, "r") as g:
        for key in ("format", "format_version", "version"):  # the format stamp itself is equal in value
            if key in f.attrs and f"@{key}" not in ignore:
                assert g.attrs[key] == f.attrs[key]


# ------------------------------------------------------------------------------------------- read-path calibration


def test_readpath_calibration_files_load_and_rewrite_identically(tmp_path: Path) -> None:
    old_h5, old_json = COMPAT / "readpath_1.h5", COMPAT / "readpath_1.json"
    cal = ReadPathCalibration.load(old_h5)
    assert cal == ReadPathCalibration.load(old_json)
    assert cal.gain == pytest.approx(0.98398, abs=1e-5) and cal.offset_a == pytest.approx(-5.5e-9, abs=0.1e-9)
    assert [(c.row, c.col, c.ohms) for c in cal.reference_cells] == [(0, 3, 5e4), (1, 3, 1e5), (2, 3, 2e5)]
    assert cal.voltages_v == [0.1, 0.2] and len(cal.points["i_board_a"]) == 6 and cal.board["board_id"] == "SIM-RRAM"
    assert cal.save(tmp_path / "c.json").read_bytes() == old_json.read_bytes()
    assert_same_layout(old_h5, cal.save(tmp_path / "c.h5"))
    assert ReadPathCalibration.load(tmp_path / "c.h5") == cal


# ------------------------------------------------------------------------------------------- run file


def test_run_file_loads_and_a_new_run_has_its_layout(tmp_path: Path) -> None:
    old = COMPAT / "run_form_1.0.h5"
    run = read_run(old)
    assert (run.procedure, run.status, run.attrs["format_version"]) == ("form", "complete", "1.0")
    assert run.params["cells"] == "0:2,0:4" and run.params["v_step"] == pytest.approx(0.2)
    assert run.summary["cells"] == 8 and run.summary["formed"] == 8 and run.summary["board_resets"] == 0
    form = run.data["form"]
    assert form.shape == (8,) and form["formed"].all() and np.all(form["g_after"] > 5e-6)
    assert [tuple(c) for c in form["cell"][:2]] == [(0, 0), (0, 1)]
    cal = ReadPathCalibration.load(COMPAT / "readpath_1.h5")
    assert run.calibration == json.loads(json.dumps(cal.to_dict()))  # the embedded calibration, as run files keep it

    new = tmp_path / "run.h5"
    with Board.open("sim://?seed=1&rows=4&cols=4") as board:
        proc = Form(FormParams(cells="0:2,0:4", v_start=2.5, v_stop=3.5, v_step=0.2), board)
        run_procedure(proc, new, calibration=cal.to_dict(), quiet=True)
        added_tables = {f"data/{t}" for t in proc.run_tables()} - {"data/form"}
    assert_run_layout_grew_by_1_1(old, new, added_tables)
    assert read_run(new).data["form"].shape == form.shape


def assert_run_layout_grew_by_1_1(old: Path, new: Path, added_tables: set[str]) -> None:
    """Format 1.1 only adds to 1.0 (RUNFILE.md section 8): `tables_json`, `chip`, checksummed chunked tables, a
    chunked `state` that ends with the committed counts, and tables a procedure gained; nothing else changes."""
    a, b = layout(old), layout(new)
    added = {"@tables_json", "@chip", *added_tables, *(f"{t}@doc" for t in added_tables)}
    assert b.keys() - a.keys() == added and a.keys() <= b.keys()
    changed = {k: (v, b[k]) for k, v in a.items() if v != b[k]}
    assert changed == {
        "state": (("dataset", "float64", 1, (False,), False, None), ("dataset", "float64", 1, (False,), True, None))
    }
    with h5py.File(old, "r") as f, h5py.File(new, "r") as g:
        assert (f.attrs["format_version"], g.attrs["format_version"]) == ("1.0", "1.1")
        assert not f["data/form"].fletcher32 and all(ds.fletcher32 for ds in g["data"].values())
        n_state = max(1, len(json.loads(g.attrs["state_keys"])))
        assert g["state"].fletcher32 and g["state"].shape == (n_state + len(g["data"]),)  # the state, then counts


def test_interrupted_1_0_run_resumes_into_a_1_1_file(tmp_path: Path) -> None:
    """An interrupted run written by the old release (the fixture with its last records cut, status running)
    resumes with today's software: the old records are kept and the file is rewritten in today's format."""
    run = tmp_path / "run.h5"
    run.write_bytes((COMPAT / "run_form_1.0.h5").read_bytes())
    with h5py.File(run, "r+") as f:
        f["data/form"].resize(3, axis=0)
        f.attrs["status"] = "running"
        for key in ("completed_utc", "summary_json"):
            del f.attrs[key]
    kept = read_run(run).data["form"].copy()
    params = read_run(run).params
    with Board.open("sim://?seed=1&rows=4&cols=4") as board:
        proc = Form(FormParams(**params), board)
        run_procedure(proc, run, resume=True, quiet=True)
    done = read_run(run)
    assert done.complete and done.attrs["format_version"] == "1.1" and done.attrs["resumed"] == 1
    assert done.attrs["chip"] == done.identity.chip != ""  # the chip its 1.0 port names
    assert np.array_equal(done.data["form"][:3], kept) and done.data["form"]["cell"][:, 1].tolist() == [0, 1, 2, 3] * 2


# ------------------------------------------------------------------------------------------- noise profile


def test_paper_profile_loads_and_a_new_one_has_its_layout(tmp_path: Path) -> None:
    old = COMPAT / "profile_ibm_1.1.h5"
    prof = load_profile(old)
    assert prof.family == "ibm_reram" and prof.format_version == "1.1" and prof.stuck_g == (55e-6, 0.4e-6)
    assert prof.open_loop is not None and prof.verified is not None and prof.relaxation_model is not None
    fresh = NoiseProfile.from_paper("ibm_reram", time="1s", n_levels=4, pulses_verified=4.0)
    fresh.stuck_g = (55e-6, 0.4e-6)
    g = np.linspace(1e-6, 40e-6, 9)
    # the B.2 constants (now in firmware_protocol.device_presets) give the same models as the old release
    np.testing.assert_array_equal(prof.programming_sigma(g), fresh.programming_sigma(g))
    np.testing.assert_array_equal(prof.relaxation(g, 3600.0)[1], fresh.relaxation(g, 3600.0)[1])
    np.testing.assert_array_equal(prof.read_sigma(g), fresh.read_sigma(g))
    assert_same_layout(old, save_profile(fresh, tmp_path / "p.h5"))


def test_measured_profile_loads_and_rewrites_with_its_layout(tmp_path: Path) -> None:
    old = COMPAT / "profile_measured_1.1.h5"
    prof = load_profile(old)
    assert prof.family is None and prof.provenance.board_id == "B-7" and prof.provenance.run_files == ["run1.h5"]
    assert prof.open_loop is not None and prof.verified is not None and prof.endurance is not None
    assert prof.pulses_per_device(False) == 1.0 and 4.0 < prof.pulses_per_device(True) < 6.0
    new = save_profile(prof, tmp_path / "p.h5")
    assert_same_layout(old, new)
    assert load_profile(new) == prof


# ------------------------------------------------------------------------------------------- model file and plan


def test_model_file_loads_and_a_new_one_has_its_keys(tmp_path: Path) -> None:
    old = COMPAT / "model_1.pt"
    model, ckpt = load_model(old)
    assert (ckpt["format"], ckpt["version"]) == ("rram-hil/model", 1)
    assert ckpt["arch"] == {
        "name": "mlp",
        "kwargs": {"hidden": [5]},
        "in_channels": 1,
        "image_size": 4,
        "num_classes": 3,
    }
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    assert TrainConfig.from_dict(ckpt["config"]).method == "noise"
    # written when sigma_d meant level steps (NeFT eq. 15): read so, and re-saved so (the full-range default is 3x)
    assert ckpt["noise"] == ckpt["config"]["noise"] == {"family": "gaussian", "sigma": 0.1, "convention": "level"}

    class Digits:
        in_channels, image_size, num_classes = 1, 4, 3

    cfg = TrainConfig.from_dict(ckpt["config"])
    save_checkpoint(model_record(cfg, Digits(), model), tmp_path / "m.pt")
    new = load_checkpoint(tmp_path / "m.pt")
    assert list(new) == list(ckpt)  # same keys in the same order
    for key in ("arch", "data", "method", "noise"):
        assert new[key] == ckpt[key]
    fresh = TrainConfig.from_dict({**ckpt["config"], "noise": {"family": "gaussian", "sigma": 0.1}})
    save_checkpoint(model_record(fresh, Digits(), model), tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt")["noise"]["convention"] == "range"  # today's spec keeps today's meaning
    assert {k: (v.dtype, v.shape) for k, v in new["state_dict"].items()} == {
        k: (v.dtype, v.shape) for k, v in ckpt["state_dict"].items()
    }
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_plan_loads_matches_its_model_and_rewrites_with_its_layout(tmp_path: Path) -> None:
    old = COMPAT / "plan_1.0.h5"
    plan = load_plan(old)
    assert (plan.rows, plan.cols, plan.g_min, plan.g_max) == (4, 4, 4e-6, 36e-6)
    assert plan.n_devices == 190 and plan.n_verified == 44 and len(plan.tiles) == 16
    assert plan.meta == {"model": "model_1.pt", "note": "compat fixture"}
    model, _ = load_model(COMPAT / "model_1.pt")  # the plan was built from this network
    rebuilt = weights_from_conductances(plan, [lp.targets for lp in plan.layers])
    for name, w in clean_weights(model).items():
        torch.testing.assert_close(rebuilt[name], w.detach(), rtol=1e-4, atol=1e-5)
    new = save_plan(plan, tmp_path / "p.h5")
    # format 1.1 adds only the tiles' row and column maps onto the array (defect-aware placement, issue 16)
    a, b = layout(old), layout(new)
    assert b.keys() - a.keys() == {"tile_rows", "tile_cols"} and {k: v for k, v in a.items() if v != b[k]} == {}
    with h5py.File(old, "r") as f, h5py.File(new, "r") as g:
        assert (f.attrs["format_version"], g.attrs["format_version"]) == ("1.0", "1.1")
    back = load_plan(new)
    for a, b in zip(plan.layers, back.layers):
        np.testing.assert_array_equal(a.targets, b.targets)
        np.testing.assert_array_equal(a.verify, b.verify)


def test_old_profile_plan_and_model_files_pass_todays_validators(tmp_path: Path) -> None:
    """Issue 15's validators (finite values, sizes bounded by the file, shapes on the meta device) accept every
    file the old release wrote; the old model file records no training state, so it loads without a warning."""
    import warnings

    from hil.deploy.plan import validate_plan
    from models.checkpoint import UnfinishedTraining, epochs_trained, validate_checkpoint

    for name in ("profile_ibm_1.1.h5", "profile_measured_1.1.h5"):
        load_profile(COMPAT / name).validate()
    validate_plan(load_plan(COMPAT / "plan_1.0.h5"), "plan_1.0.h5")
    ckpt = load_checkpoint(COMPAT / "model_1.pt")
    validate_checkpoint(ckpt, "model_1.pt")
    assert epochs_trained(ckpt) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinishedTraining)
        load_model(COMPAT / "model_1.pt")


# ------------------------------------------------------------------------------------------- simulator ground truth


def test_ground_truth_loads_and_a_new_one_has_its_layout(tmp_path: Path) -> None:
    old = COMPAT / "ground_truth_1.h5"
    gt = load_ground_truth(old)
    assert (gt["format"], gt["rows"], gt["cols"], gt["seed"]) == ("rram-hil-sim-ground-truth/1", 4, 4, 5)
    # today's defaults are the old release's but for the relaxation law, re-anchored in issue 16: the old one (one
    # relax_t0_s, a sigma polynomial) loads as the same law sampled at the relaxation nodes
    params = params_from_ground_truth(gt)
    relax = ("relax_g_nodes_us", "relax_t0_nodes_s", "relax_sigma_nodes_us", "relax_mu_coeffs_us")
    assert dataclasses.replace(params, **{k: getattr(DeviceParams(), k) for k in relax}) == DeviceParams()
    assert set(params.relax_t0_nodes_s) == {gt["params"]["relax_t0_s"]}
    assert gt["cells"]["formed"].shape == (4, 4) and gt["cells"]["formed"].all()
    assert sorted(gt["read_chain"]) == ["pulse", "read"] and "relaxation" in gt["laws"]

    arr = RRAMArray(4, 4, seed=5)
    r, c = np.divmod(np.arange(16), 4)
    arr.form(r, c, v_form=3.6, width_ns=1000.0, v_gate=1.0)
    new = tmp_path / "gt.h5"
    arr.write_ground_truth(new, read_chain=ReadChain(seed=5))
    # Version 2 (issue 16): the relaxation parameters changed names with the law, and the spatial gain field
    # added two parameters, a law and a cell dataset; every other key is the old release's
    relax_keys = ("relax_t0_s", "relax_sigma_coeffs_us", "relax_g_nodes_us", "relax_t0_nodes_s", "relax_sigma_nodes_us")
    v2_keys = {f"params@{k}" for k in (*relax_keys, "spatial_sigma", "spatial_length_cells")}
    assert_same_layout(old, new, ignore=frozenset({*v2_keys, "laws@spatial", "cells/spatial_ln_gain", "@format"}))
    with h5py.File(new, "r") as f:
        assert f.attrs["format"] == "rram-hil-sim-ground-truth/2"
    again = load_ground_truth(new)
    # The device-to-device draws depend only on the seed and are the old release's; the state after forming
    # comes from the cycle-to-cycle streams, which became counter-based (per cell and event) in issue 14, so
    # those cells keep their dtype and shape, and their values follow the same laws but are new draws.
    after_forming = {"g_programmed", "conductance_now", "t_programmed"}
    for name, values in gt["cells"].items():
        if name in after_forming:
            assert again["cells"][name].dtype == values.dtype and again["cells"][name].shape == values.shape, name
        else:
            np.testing.assert_array_equal(again["cells"][name], values, err_msg=name)
