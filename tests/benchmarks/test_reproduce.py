"""The reproduction harness: shipped protocols parse and name real options, the verdict arithmetic, the runner end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.reproduce import cli, runner
from benchmarks.reproduce.config import available, check_protocol, load_protocol, parse_metric
from benchmarks.reproduce.profiles import build_profile, resolve_spec
from benchmarks.reproduce.verdict import FAILS, HOLDS, INCONCLUSIVE, judge, paired_diffs

T_975_4 = 2.776  # t(0.975, 4) from a table, rounded to 3 decimals (exact 2.776445)


@pytest.mark.parametrize("name", available())
def test_shipped_protocol_parses_and_names_registered_methods_and_options(name: str) -> None:
    p = load_protocol(name)
    check_protocol(p)  # every label's Options instantiated with its fixed values and every grid value
    assert p.claims, "a protocol without claims judges nothing"
    sec = p.standin
    assert sec.data in ("digits", "mnist1d"), "the stand-in runs on the embedded or generated data"
    assert sec.seeds >= 5
    if any(parse_metric(c.metric)[0] == "kpp" for c in p.claims):
        assert sec.draws >= 1000, "a KPP claim needs >= 1000 draws per run"
    for decl_name, decl in p.profiles.items():
        build_profile(decl_name, decl).validate()


def test_protocol_with_an_unknown_option_is_refused_in_one_line(tmp_path: Path) -> None:
    raw = _tiny_protocol()
    raw["methods"]["noise"]["options"] = {"bogus": 1}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unknown option.*bogus") as info:
        check_protocol(load_protocol(str(path)))
    assert "\n" not in str(info.value)


def test_claim_naming_a_missing_condition_is_refused(tmp_path: Path) -> None:
    raw = _tiny_protocol()
    raw["claims"][0]["condition"] = "nowhere"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="nowhere"):
        load_protocol(str(path))


def test_verdict_holds_with_the_hand_computed_t_interval() -> None:
    d = [0.01, 0.02, 0.03, 0.02, 0.02]
    # mean 0.02; sd = sqrt((1e-4 + 0 + 1e-4 + 0 + 0) / 4) = sqrt(5e-5); half = t * sd / sqrt(5)
    half = T_975_4 * math.sqrt(5e-5) / math.sqrt(5)
    r = judge(d)
    # the table's t is rounded to 1e-3: |dt| <= 5e-4 times sd/sqrt(5) = 3.2e-3 gives < 2e-6 on the half-width
    assert r.n == 5 and r.mean == pytest.approx(0.02, abs=1e-15)
    assert r.half_width == pytest.approx(half, abs=2e-6)
    assert r.lo == pytest.approx(0.02 - half, abs=2e-6) and r.hi == pytest.approx(0.02 + half, abs=2e-6)
    assert r.verdict == HOLDS  # lo = 0.0112 > 0
    # the same data against a margin inside the interval, then above it
    assert judge(d, margin=0.015).verdict == INCONCLUSIVE
    assert judge(d, margin=0.03).verdict == FAILS  # hi = 0.0288 < 0.03


def test_verdict_does_not_hold_and_inconclusive() -> None:
    assert judge([-0.03, -0.01, -0.02, -0.02, -0.02]).verdict == FAILS  # hi = -0.0112 < 0
    mixed = judge([0.05, -0.04, 0.01, 0.0, 0.02])
    assert mixed.lo < 0 < mixed.hi and mixed.verdict == INCONCLUSIVE
    one = judge([0.5])
    assert one.verdict == INCONCLUSIVE and math.isnan(one.lo) and one.mean == 0.5
    assert judge([]).n == 0


def test_paired_diffs_pair_common_seeds_and_sign_by_direction() -> None:
    a, b = {0: 0.9, 1: 0.8, 2: 0.7}, {1: 0.5, 2: 0.75, 3: 0.1}
    assert paired_diffs(a, b, ">") == pytest.approx([0.3, -0.05])
    assert paired_diffs(a, b, "<") == pytest.approx([-0.3, 0.05])  # "a lower" claims: b - a


def test_spatial_profile_keeps_the_declared_correlated_variance() -> None:
    decl = {
        "family": "gaussian",
        "sigma": 0.05,
        "spatial": {"shape": [4, 4], "length": 2.0, "fraction": 0.5, "rank": 16},
    }
    prof = build_profile("corr", decl)
    sp = prof.spatial
    var = 0.5 * (0.05 * prof.g_max) ** 2  # fraction * (sigma * g_max)^2 per cell
    # at full rank the eigenvalues sum to the trace, 16 cells x var (float64 eigh: ~1e-15 relative)
    assert float(np.sum(sp.eigvals)) == pytest.approx(16 * var, rel=1e-10)
    assert sp.total_variance == pytest.approx(16 * var, rel=1e-12)
    spec = resolve_spec({"family": "profile", "path": "@corr"}, {"corr": Path("/x/corr.h5")})
    assert spec == {"family": "profile", "path": "/x/corr.h5"}


def _tiny_protocol() -> dict[str, Any]:
    """Two methods (noise with a two-point grid) on digits with a 16-unit MLP, 1 epoch, 2 seeds, few draws."""
    section = {
        "data": "digits",
        "model": "mlp",
        "model_kwargs": {"hidden": [16]},
        "epochs": 1,
        "lr": 3e-3,
        "seeds": 2,
        "val_draws": 4,
        "draws": 12,
        "kpp": [5.0],
        "train_noise": {"g": {"family": "gaussian", "sigma": 0.3}},
        "conditions": {"g": {"train": "g", "noise": {"family": "gaussian", "sigma": 0.3}}},
    }
    return {
        "id": "tiny",
        "paper": "Tiny",
        "methods": {
            "vanilla": {"method": "vanilla"},
            "noise": {"method": "noise", "grid": {"scale": [0.5, 1.0]}},
        },
        "claims": [
            {
                "id": "t-mean",
                "text": "noise beats vanilla",
                "metric": "mean",
                "condition": "g",
                "a": "noise",
                "b": "vanilla",
            },
            {"id": "t-kpp", "text": "tail", "metric": "kpp:5", "condition": ["g"], "a": "noise", "b": "vanilla"},
        ],
        "full": {**section, "data": "cifar10"},
        "standin": section,
    }


def test_runner_end_to_end_resumes_and_reads_the_test_split_only_at_the_end(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(_tiny_protocol()))
    proto = load_protocol(str(path))
    check_protocol(proto)
    events: list[str] = []
    real_train, real_read = runner.train, runner.read_split

    def watched_train(cfg, *, dataset, **kw):
        assert dataset.x_test.numel() == 0 and dataset.y_test.numel() == 0, "training was handed the test split"
        assert kw.get("evaluate_test") is False
        events.append("train")
        return real_train(cfg, dataset=dataset, **kw)

    def watched_read(ds, seed, val_fraction, split):
        events.append(f"read:{split}")
        return real_read(ds, seed, val_fraction, split)

    monkeypatch.setattr(runner, "train", watched_train)
    monkeypatch.setattr(runner, "read_split", watched_read)
    opts = runner.RunOptions(out=tmp_path / "out")
    res = runner.run_protocol(proto, opts)

    # vanilla once per seed, noise twice per seed (its grid): 6 runs; then validation of the 4 noise runs
    assert events.count("train") == 6 and res.trained == 6
    first_test = events.index("read:test")
    assert "train" not in events[first_test:] and "read:val" not in events[first_test:]
    assert events.count("read:test") == 4  # the chosen run of 2 labels x 2 seeds, 1 condition, read once each
    assert events.count("read:val") == 4
    assert set(res.stats) == {"vanilla", "noise"} and all(len(res.stats[k]["g"]) == 2 for k in res.stats)
    chosen = res.chosen["noise"]["g"]["scale"]
    assert chosen in (0.5, 1.0)
    (mean_claim, mean_res, _), (kpp_claim, kpp_res, ctx) = res.claims
    assert mean_res.n == 2 and kpp_res.n == 2 and "a_kpp_ci" in ctx
    a = [res.stats["noise"]["g"][s]["mean"] for s in (0, 1)]
    b = [res.stats["vanilla"]["g"][s]["mean"] for s in (0, 1)]
    assert list(mean_res.diffs) == pytest.approx([a[0] - b[0], a[1] - b[1]], abs=1e-15)

    # the rerun trains and evaluates nothing, and gives the same numbers
    def no_training(*_a, **_k):
        raise AssertionError("a cached run was trained again")

    events.clear()
    monkeypatch.setattr(runner, "train", no_training)
    again = runner.run_protocol(proto, opts)
    assert again.trained == 0 and again.evaluated == 0 and "read:test" not in events
    assert [r.mean for _, r, _ in again.claims] == [r.mean for _, r, _ in res.claims]
    assert again.chosen == res.chosen


def test_cli_full_without_data_dir_is_a_one_line_error_naming_the_layout(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--config", "neft_table1", "--full", "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--data-dir" in err and "cifar-10-batches-py" in err
