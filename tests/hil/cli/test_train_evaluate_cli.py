"""`rram train` / `rram evaluate` through click's CliRunner, JSON output checked."""

import json

import pytest
import torch
from click.testing import CliRunner

from hil.cli import cli
from tests.helpers.cli import assert_one_line_error, rram

torch.set_num_threads(1)


def make_net(num_classes: int = 10, width: int = 16) -> torch.nn.Module:
    """A user model factory, loaded as "tests.hil.cli.test_train_evaluate_cli:make_net"."""
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, num_classes)
    )


USER = ["--model", "tests.hil.cli.test_train_evaluate_cli:make_net"]  # a file naming it loads only when given


def test_train_then_evaluate_json(tmp_path):
    r = CliRunner()
    out = tmp_path / "m.pt"
    res = r.invoke(
        cli,
        [
            "train",
            "--model",
            "mlp",
            "--data",
            "digits",
            "--method",
            "noise",
            "--sigma",
            "1.0",
            "--epochs",
            "2",
            "--seed",
            "3",
            "--lr",
            "0.003",
            "--val-draws",
            "3",
            "--no-progress",
            "--json",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    hist = json.loads(res.output)["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and 0.5 < hist[-1]["val_acc"] <= 1.0
    assert "val_noisy_acc" in hist[-1]
    ev = r.invoke(cli, ["evaluate", str(out), "--mc", "40", "--kpp", "1", "--kpp", "10", "--json", "--per-draw"])
    assert ev.exit_code == 0, ev.output
    d = json.loads(ev.output)
    assert d["n_draws"] == 40 and d["noise"] == {"family": "gaussian", "sigma": 1.0, "convention": "range"}
    accs = d["accuracies"]
    # the mean of 40 accuracies in [0, 1], summed in another order: the two differ by at most ~40 ulps (1e-14)
    assert len(accs) == 40 and abs(sum(accs) / 40 - d["mean"]) < 1e-12
    assert d["kpp"]["1.0"] == min(accs) == d["worst"]
    assert d["kpp"]["10.0"] == sorted(accs)[3]
    assert d["ci95"][0] < d["mean"] < d["ci95"][1] and d["ekl"] > 0
    # 40 draws, B ~ Binomial(40, 0.1): P(B < 1) = 0.015 <= 0.025 < P(B < 2), P(B >= 9) <= 0.025 < P(B >= 8), so
    # the 10th percentile's 95% interval is the 1st to 9th draws; the 1st percentile has no lower rank
    # (0.99^40 > 0.025): its interval starts at the worst draw and its coverage says so
    assert d["kpp_ci"]["10.0"] == [sorted(accs)[0], sorted(accs)[8]] and d["kpp_ci_coverage"]["10.0"] >= 0.95
    assert d["kpp_ci"]["1.0"][0] == min(accs) and d["kpp_ci_coverage"]["1.0"] < 0.95
    assert 0 <= d["ece"] <= 1 and d["temperature"] > 0 and d["ekl_matched"] > 0


def test_evaluate_with_a_profile_and_resume(tmp_path):
    from calibration.profile import NoiseProfile, save_profile

    prof = tmp_path / "p.h5"
    save_profile(NoiseProfile.from_paper("ibm_reram", time="1s"), prof)
    r = CliRunner()
    out = tmp_path / "m.pt"
    res = r.invoke(
        cli,
        [
            "train",
            "--model",
            "tests.hil.cli.test_train_evaluate_cli:make_net",
            "--model-arg",
            "width=24",
            "--profile",
            str(prof),
            "--t-s",
            "3600",
            "--epochs",
            "1",
            "--no-progress",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    res = r.invoke(
        cli,
        [
            "train",
            "--model",
            "tests.hil.cli.test_train_evaluate_cli:make_net",
            "--model-arg",
            "width=24",
            "--profile",
            str(prof),
            "--t-s",
            "3600",
            "--epochs",
            "2",
            "--no-progress",
            "--resume",
            str(out),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output and "epoch 2/2" in res.output
    ev = r.invoke(cli, ["evaluate", str(out), *USER, "--mc", "20", "--json"])
    d = json.loads(ev.output)
    assert d["noise"]["family"] == "profile" and d["noise"]["t_s"] == 3600.0 and "accuracies" not in d
    ev2 = r.invoke(cli, ["evaluate", str(out), *USER, "--mc", "20", "--additive", "0.0"])
    assert ev2.exit_code == 0 and "worst draw" in ev2.output
    rows = {ln.split("  ")[1]: ln for ln in ev2.output.splitlines() if ln.startswith("  ")}
    assert {"clean accuracy", "noisy accuracy", "noisy std", "KPP 1%", "worst draw", "EKL"} <= set(rows)
    assert {"EKL matched", "ECE"} <= set(rows) and rows["ECE"].split()[2] == "%"
    assert "95% CI [" in rows["noisy accuracy"] and rows["noisy accuracy"].split()[3] == "%"
    # 20 draws are too few for the 1 % KPP's lower rank: the line gives the interval, its coverage and the fix
    assert "[" in rows["KPP 1%"] and "covers only" in rows["KPP 1%"] and "--mc >= 368" in rows["KPP 1%"]


def test_cli_errors_are_one_line(tmp_path):
    r = CliRunner()
    res = r.invoke(cli, ["evaluate", str(tmp_path / "none.pt")])
    assert res.exit_code != 0 and "does not exist" in str(res.exception or res.output)
    res = r.invoke(cli, ["train", "--sigma", "1", "--lognormal", "0.2", "-o", str(tmp_path / "x.pt")])
    assert res.exit_code != 0 and "one noise source" in res.output
    res = r.invoke(cli, ["train", "--method", "nope", "-o", str(tmp_path / "x.pt")])
    assert res.exit_code != 0 and "unknown training method" in res.output
    res = r.invoke(cli, ["train", "--list-methods"])
    assert res.exit_code == 0 and {"vanilla", "noise"} <= set(res.output.split())
    res = r.invoke(
        cli, ["train", "--data", "mnist", "--data-root", str(tmp_path), "-o", str(tmp_path / "x.pt"), "--no-progress"]
    )
    assert res.exit_code != 0 and "train-images-idx3-ubyte" in str(res.exception)


def test_list_methods_shows_every_option_aligned():
    from models.methods import METHODS
    from models.methods.options import describe_options, format_value

    res = CliRunner().invoke(cli, ["train", "--list-methods"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    heads = [ln for ln in lines if not ln.startswith(" ")]
    assert [h.split()[0] for h in heads] == METHODS.names()
    for name, cls in METHODS.items():
        head = next(h for h in heads if h.split()[0] == name)
        assert head.split(None, 1)[1] == cls.description()
    assert len({h.index(h.split(None, 1)[1]) for h in heads}) == 1  # descriptions start in one column
    dat = lines.index(next(h for h in heads if h.startswith("dat ")))
    rows = lines[dat + 1 : dat + 1 + len(describe_options(METHODS.get("dat").Options))]
    for row, info in zip(rows, describe_options(METHODS.get("dat").Options)):
        assert row.split()[:3] == [info.name, info.kind, format_value(info.default)] and row.endswith(info.help)
    option_rows = [ln for ln in lines if ln.startswith("    ") and ln.strip() != "(no options)"]
    for col in range(1, 4):  # type, default and help columns
        starts = {len(ln) - len(ln.lstrip()) + _column_start(ln.lstrip(), col) for ln in option_rows}
        assert len(starts) == 1, col
    assert "    (no options)" in lines[lines.index(next(h for h in heads if h.startswith("vanilla"))) + 1]


def _column_start(row: str, col: int) -> int:
    """Offset of the col-th cell of an option row whose cells are separated by runs of two or more spaces."""
    import re

    return [m.end() for m in re.finditer(r"\S {2,}(?=\S)", row)][col - 1]


def test_list_methods_json_is_the_typed_defaults():
    from models.methods import METHODS

    res = CliRunner().invoke(cli, ["train", "--list-methods", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert [m["name"] for m in listed] == METHODS.names()
    for m in listed:
        fresh = METHODS.get(m["name"]).Options()
        assert m["description"] and all(o["help"] and o["type"] for o in m["options"])
        assert {o["name"]: o["default"] for o in m["options"]} == json.loads(json.dumps(fresh.__dict__))


@pytest.mark.parametrize(
    "opt, fragments",
    [
        ("alpah=3", ["method 'dat': unknown option(s) alpah (known: rank, scope, alpha,"]),
        ("alpha=fast", ["method 'dat': option alpha must be a number, got 'fast'"]),
        ("alpha", ["--opt expects KEY=VALUE, got 'alpha'"]),
        ("rank=0.5", ["option rank must be an integer, got 0.5"]),
    ],
)
def test_bad_opt_is_a_one_line_error_before_training(capsys, monkeypatch, tmp_path, opt, fragments):
    out = tmp_path / "x.pt"
    r = rram(capsys, monkeypatch, "train", "--method", "dat", "--sigma", "0.3", "--opt", opt, "-o", str(out))
    assert_one_line_error(r, *fragments)
    assert not out.exists()


def test_opt_reaches_the_method_and_the_model_file(tmp_path):
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(
        cli,
        [
            "train",
            "--model",
            "mlp",
            "--method",
            "trice",
            "--sigma",
            "0.5",
            "--opt",
            "lam=2",
            "--opt",
            "recentre=yes",
            "--epochs",
            "1",
            "--no-progress",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    from models.checkpoint import load_checkpoint
    from models.methods import get_method

    rec = load_checkpoint(out)
    assert rec["config"]["method_options"] == {"lam": 2, "recentre": "yes"}  # recorded as given
    o = get_method("trice", **rec["config"]["method_options"]).options
    assert (o.lam, o.recentre, o.scale) == (2.0, True, 1.0)


# ------------------------------------------------------------------------------ profiles fit the tools that use them

TINY = ["--model", "tests.hil.cli.test_train_evaluate_cli:make_net", "--model-arg", "width=8", "--epochs", "1"]
QUICK = [*TINY, "--val-draws", "1", "--no-progress"]


def measured_3bit_profile(path):
    """A profile fitted like one from a chip: 8 programmed levels, so 3 bits per device, polynomial laws."""
    import numpy as np

    from calibration import synthetic as syn
    from calibration.fit import fit_profile
    from calibration.profile import save_profile

    rng = np.random.default_rng(0)
    levels = np.linspace(5e-6, 40e-6, 8)
    p = fit_profile(
        open_loop=syn.programming(rng, levels, 60),
        verified=syn.programming(rng, levels, 60, "additive", eta=0.01, verified=True, mean_pulses=6),
    )
    assert (p.n_levels, p.bits_per_device, p.family) == (8, 3, None)
    save_profile(p, path)
    return path


def per_level_3bit_profile(path):
    """A hand-made state-dependent profile of 8 levels: its laws hold per level only."""
    from calibration.profile import NoiseProfile, save_profile

    save_profile(NoiseProfile.from_paper("state_dependent", sigma=0.02, n_levels=8), path)
    return path


def test_a_3bit_chip_profile_trains_with_an_automatic_mapping(tmp_path, capsys, monkeypatch):
    from models.checkpoint import load_checkpoint, model_mapping
    from models.noise.factory import MappingChoice

    prof = measured_3bit_profile(tmp_path / "chip.h5")
    out = tmp_path / "m.pt"
    r = rram(capsys, monkeypatch, "train", *QUICK, "--profile", str(prof), "-o", str(out))
    assert r.code == 0, r.text
    assert "analog conductance pairs" in r.out  # continuous (fitted) laws: one analog pair per weight
    assert model_mapping(load_checkpoint(out)) == MappingChoice("analog")
    # asked for bit-sliced: 9 bits, the smallest multiple of the 3-bit devices that is >= 8
    again = ["--mapping", "bitsliced", "-o", str(out), "--force"]
    r = rram(capsys, monkeypatch, "train", *QUICK, "--profile", str(prof), *again)
    assert r.code == 0, r.text
    assert "bit-sliced 9-bit weights on 3-bit devices" in r.out
    assert load_checkpoint(out)["noise"]["bits"] == 9
    # a resumed run continues with its own mapping (the automatic choice would be analog) ...
    resume = ["--profile", str(prof), "--resume", str(out), "-o", str(out)]
    r = rram(capsys, monkeypatch, "train", *QUICK, "--epochs", "2", *resume)
    assert r.code == 0, r.text
    assert "resumed" in r.out and model_mapping(load_checkpoint(out)) == MappingChoice("bitsliced", 9)
    # ... and refuses one that contradicts it
    r = rram(capsys, monkeypatch, "train", *QUICK, "--epochs", "3", *resume, "--mapping", "analog")
    assert_one_line_error(r, "was trained with bit-sliced 9-bit weights; --mapping analog contradicts it")


def test_a_per_level_profile_is_bit_sliced_and_an_impossible_bits_is_refused(tmp_path, capsys, monkeypatch):
    from models.checkpoint import load_checkpoint, model_mapping
    from models.noise.factory import MappingChoice

    prof = per_level_3bit_profile(tmp_path / "p3.h5")
    out = tmp_path / "m.pt"
    r = rram(capsys, monkeypatch, "train", *QUICK, "--profile", str(prof), "-o", str(out))
    assert r.code == 0, r.text
    assert model_mapping(load_checkpoint(out)) == MappingChoice("bitsliced", 9)
    bad = tmp_path / "bad.pt"
    r = rram(capsys, monkeypatch, "train", *QUICK, "--profile", str(prof), "--bits", "8", "-o", str(bad))
    assert_one_line_error(r, "--bits 8 does not fit", "3 bits each", "multiple of 3 (e.g. 6 or 9)", "--mapping analog")
    assert not bad.exists()
    r = rram(
        capsys,
        monkeypatch,
        "train",
        *QUICK,
        "--profile",
        str(prof),
        "--mapping",
        "analog",
        "--bits",
        "6",
        "-o",
        str(bad),
    )
    assert_one_line_error(r, "--bits sets the resolution of the bit-sliced mapping")
    r = rram(capsys, monkeypatch, "train", *QUICK, "--sigma", "0.1", "--bits", "6", "-o", str(bad))
    assert_one_line_error(r, "give --profile too")
    r = rram(capsys, monkeypatch, "train", *QUICK, "--profile", str(prof), "--bits", "6", "-o", str(bad))
    assert r.code == 0, r.text
    assert model_mapping(load_checkpoint(bad)) == MappingChoice("bitsliced", 6)


def test_evaluate_takes_the_mapping_from_the_model_file(tmp_path, capsys, monkeypatch):
    prof = per_level_3bit_profile(tmp_path / "p3.h5")
    out = tmp_path / "m.pt"
    r = rram(capsys, monkeypatch, "train", *QUICK, "--profile", str(prof), "--bits", "6", "-o", str(out))
    assert r.code == 0, r.text
    ev = ["evaluate", str(out), *USER, "--mc", "4", "--profile", str(prof), "--t-s", "60"]
    r = rram(capsys, monkeypatch, *ev, "--json")
    assert r.code == 0, r.text
    noise = json.loads(r.out)["noise"]
    assert (noise["mapping"], noise["bits"], noise["t_s"]) == ("bitsliced", 6, 60.0)  # the profile given once
    r = rram(capsys, monkeypatch, *ev, "--mapping", "analog")
    assert_one_line_error(r, "trained with bit-sliced 6-bit weights", "--mapping analog contradicts it")
    r = rram(capsys, monkeypatch, *ev, "--bits", "9")
    assert_one_line_error(r, "--bits 9 contradicts it", "leave --bits out")
    r = rram(capsys, monkeypatch, "evaluate", str(out), *USER, "--mc", "4", "--bits", "9")
    assert_one_line_error(r, "--bits 9 contradicts it")
    r = rram(capsys, monkeypatch, "evaluate", str(out), *USER, "--mc", "4", "--mapping", "bitsliced", "--json")
    assert r.code == 0 and json.loads(r.out)["noise"]["bits"] == 6  # agreeing with the model file is fine
    four_bit = tmp_path / "p4.h5"
    from calibration.profile import NoiseProfile, save_profile

    save_profile(NoiseProfile.from_paper("state_dependent", sigma=0.02, n_levels=16), four_bit)
    r = rram(capsys, monkeypatch, "evaluate", str(out), *USER, "--mc", "4", "--profile", str(four_bit))
    assert_one_line_error(r, "6-bit weights", "4-bit devices", "retrain with --profile")


def test_a_model_file_from_before_the_mapping_record_evaluates_as_trained(tmp_path, capsys, monkeypatch):
    """Old files' profile specs carry no "bits" (and maybe no "mapping"): they were trained bit-sliced, 8 bits."""
    from calibration.profile import NoiseProfile, save_profile
    from models.checkpoint import load_checkpoint

    prof = tmp_path / "p2.h5"
    save_profile(NoiseProfile.from_paper("gaussian", sigma=0.02), prof)  # 4 levels, 2 bits per device
    out = tmp_path / "m.pt"
    r = rram(capsys, monkeypatch, "train", *QUICK, "--profile", str(prof), "--mapping", "bitsliced", "-o", str(out))
    assert r.code == 0, r.text
    ckpt = load_checkpoint(out)
    for rec in (ckpt["noise"], ckpt["config"]["noise"]):
        del rec["bits"], rec["mapping"]
    torch.save(ckpt, out)
    r = rram(capsys, monkeypatch, "evaluate", str(out), *USER, "--mc", "4", "--profile", str(prof), "--json")
    assert r.code == 0, r.text
    noise = json.loads(r.out)["noise"]
    assert (noise["mapping"], noise["bits"]) == ("bitsliced", 8)
    r = rram(
        capsys, monkeypatch, "evaluate", str(out), *USER, "--mc", "4", "--profile", str(prof), "--mapping", "analog"
    )
    assert_one_line_error(r, "trained with bit-sliced 8-bit weights", "contradicts")


# ------------------------------------------------------------------------------ output people read


def test_train_refuses_to_replace_a_model_file_without_force(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.pt"
    out.write_bytes(b"an earlier model")
    r = rram(capsys, monkeypatch, "train", *QUICK, "--sigma", "0.1", "-o", str(out))
    assert_one_line_error(r, f"{out} already exists", "--force")
    assert out.read_bytes() == b"an earlier model"
    r = rram(capsys, monkeypatch, "train", *QUICK, "--sigma", "0.1", "-o", str(out), "--force")
    assert r.code == 0, r.text
    from models.checkpoint import load_checkpoint

    assert load_checkpoint(out)["noise"] == {"family": "gaussian", "sigma": 0.1, "convention": "range"}


def test_train_summary_is_aligned_name_value_unit(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.pt"
    r = rram(capsys, monkeypatch, "train", *QUICK, "--sigma", "0.1", "-o", str(out))
    assert r.code == 0, r.text
    lines = r.out.splitlines()
    rows = lines[lines.index(f"wrote {out}") + 1 :]
    assert [ln.split("  ")[1] for ln in rows] == ["epochs", "clean accuracy", "noisy accuracy", "training time"]
    ends = {len(ln.split(" %")[0]) for ln in rows if " %" in ln}
    assert len(ends) == 1  # the accuracies end in one column, each in %
    j = rram(capsys, monkeypatch, "train", *QUICK, "--sigma", "0.1", "-o", str(out), "--force", "--json")
    test = json.loads(j.out)["test"]
    assert f"{100 * test['test_acc']:.2f} %" in rows[1]  # the JSON keeps the full-precision fraction


def _subprocess(*args, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_piped_output_has_no_progress_bars(tmp_path):
    """Into a pipe (a log file, CI) training and Monte Carlo print plain lines, never '\\r' bars."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "m.pt"
    r = _subprocess("train", *TINY, "--epochs", "2", "--sigma", "0.1", "-o", str(out), cwd=root)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout + r.stderr
    assert [ln.split("  ")[0] for ln in r.stdout.splitlines() if ln.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    r = _subprocess("evaluate", str(out), *USER, "--mc", "8", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout + r.stderr
    assert r.stderr.splitlines()[-1].startswith("Monte Carlo: 8/8 draws in ")


# ------------------------------------------------------------------------------ issue 15 item 12


def test_a_scalar_hidden_for_the_mlp_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.pt"
    r = rram(capsys, monkeypatch, "train", "--model", "mlp", "--model-arg", "hidden=16", "-o", str(out))
    assert_one_line_error(
        r, "--model-arg: model mlp: hidden must be a list of layer widths >= 1, like hidden=[256,128]"
    )
    r = rram(capsys, monkeypatch, "train", "--model", "cnn", "--model-arg", "width=3", "-o", str(out))
    assert_one_line_error(r, "model cnn takes channels, hidden; got unknown width=3")
    assert not out.exists()


def _all_wrong_model(path):
    """An MLP whose 11th class (absent from digits) always wins: no prediction is right, so EKL is undefined."""
    from models.architectures import build_model
    from models.checkpoint import model_record, save_checkpoint
    from models.config import TrainConfig

    class Eleven:
        in_channels, image_size, num_classes = 1, 8, 11

    net = build_model("mlp", in_channels=1, num_classes=11, image_size=8, hidden=[4])
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.state_dict()["net.3.bias"][10] = 100.0  # the last Linear's bias (state_dict tensors share storage)
    save_checkpoint(model_record(TrainConfig(model="mlp", model_kwargs={"hidden": [4]}), Eleven(), net), path)
    return path


def test_json_output_is_strict_json_with_null_for_nan(tmp_path, capsys, monkeypatch):
    """EKL (mean KL over correct predictions) of a network that gets nothing right is NaN: JSON gets null."""
    path = _all_wrong_model(tmp_path / "wrong.pt")
    r = rram(capsys, monkeypatch, "evaluate", str(path), "--lognormal", "0.1", "--mc", "2", "--json")
    assert r.code == 0, r.text
    d = json.loads(r.out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert d["ekl"] is None and d["mean"] == 0.0


def test_a_model_from_a_run_stopped_early_warns_in_one_line(tmp_path, capsys, monkeypatch):
    from models.config import TrainConfig
    from models.training import train

    ck = tmp_path / "run.pt"
    cfg = TrainConfig(model="mlp", model_kwargs={"hidden": [8]}, epochs=4, batch_size=512, checkpoint=str(ck))
    train(cfg, log=lambda s: None, stop_after=1)  # what a run killed after its first epoch leaves
    r = rram(capsys, monkeypatch, "evaluate", str(ck), "--lognormal", "0.1", "--mc", "2", "--json")
    assert r.code == 0, r.text
    assert json.loads(r.out)["n_draws"] == 2  # stdout stays JSON; the warning is on stderr
    warning = [ln for ln in r.err.splitlines() if ln.startswith("warning: ")]
    assert warning == [
        f"warning: {ck} was trained for 1 of its 4 planned epochs (the run stopped early); "
        f"finish it with `rram train --resume {ck} -o {ck}` and the same options"
    ]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--scheduler", "step:0:0.8"], "--scheduler 'step:0:0.8': EPOCHS must be >= 1"),
        (["--scheduler", "linear"], "--scheduler 'linear': write step:EPOCHS:GAMMA"),
        (["--analog", "nope"], "--analog: unknown analog tile preset 'nope' (known: ibm_table1, ideal)"),
        (["--method", "ibm_hwa", "--sigma", "0.1", "--analog", "ibm_table1"], "ibm_hwa trains on its own analog tiles"),
    ],
)
def test_train_refuses_bad_schedules_and_tiles_in_one_line(tmp_path, capsys, monkeypatch, args, fragment):
    out = tmp_path / "m.pt"
    assert_one_line_error(rram(capsys, monkeypatch, "train", *QUICK, *args, "-o", str(out)), fragment)
    assert not out.exists()  # refused before any training wrote a model file
