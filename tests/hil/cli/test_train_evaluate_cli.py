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
    assert d["n_draws"] == 40 and d["noise"] == {"family": "gaussian", "sigma": 1.0}
    accs = d["accuracies"]
    assert len(accs) == 40 and abs(sum(accs) / 40 - d["mean"]) < 1e-12
    assert d["kpp"]["1.0"] == min(accs) == d["worst"]
    assert d["kpp"]["10.0"] == sorted(accs)[3]
    assert d["ci95"][0] < d["mean"] < d["ci95"][1] and d["ekl"] > 0


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
    ev = r.invoke(cli, ["evaluate", str(out), "--mc", "20", "--json"])
    d = json.loads(ev.output)
    assert d["noise"]["family"] == "profile" and d["noise"]["t_s"] == 3600.0 and "accuracies" not in d
    ev2 = r.invoke(cli, ["evaluate", str(out), "--mc", "20", "--additive", "0.0"])
    assert ev2.exit_code == 0 and "worst draw" in ev2.output
    assert "noisy mean (std) " in ev2.output


def test_cli_errors_are_one_line(tmp_path):
    r = CliRunner()
    res = r.invoke(cli, ["evaluate", str(tmp_path / "none.pt")])
    assert res.exit_code != 0 and "does not exist" in str(res.exception or res.output)
    res = r.invoke(cli, ["train", "--sigma", "1", "--lognormal", "0.2", "-o", str(tmp_path / "x.pt")])
    assert res.exit_code != 0 and "one noise source" in str(res.exception)
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
