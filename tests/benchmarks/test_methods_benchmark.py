"""The methods benchmark: its protocol (choices on validation, test read once, paired CIs), and end to end on MNIST."""

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from models.data.readers import write_idx

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    """The benchmark script as a module (on sys.path, so its spawned workers can import it too)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module("methods_digits")


def _learnable_mnist(folder: Path, n_train: int, n_test: int) -> None:
    """Digit k is a bright 6x6 square at a class-specific place plus noise, so a small CNN learns it."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            r, c = 2 + 8 * (k // 4), 2 + 6 * (k % 4)
            x[i, r : r + 6, c : c + 6] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y)


@pytest.mark.slow  # two spawned training processes (a torch import each): ~80 s on two busy cores
def test_methods_benchmark_on_local_mnist(tmp_path):
    # 400 images: 360 train after the 10 % validation split, enough for 4 epochs to learn the squares
    _learnable_mnist(tmp_path / "MNIST" / "raw", 400, 100)
    out, raw = tmp_path / "table.md", tmp_path / "runs.json"
    rc = _bench().main(
        [
            "--data",
            "mnist",
            "--data-dir",
            str(tmp_path),
            "--methods",
            "vanilla,noise",
            "--seeds",
            "1",
            "--epochs",
            "4",
            "--draws",
            "8",
            "--sigmas",
            "0.3",
            "--jobs",
            "2",
            "--out",
            str(out),
            "--json",
            str(raw),
        ]
    )
    assert rc == 0
    saved = json.loads(raw.read_text())
    runs = saved["runs"]
    assert [r["label"] for r in runs] == ["vanilla", "noise"] and saved["chosen"] == {"vanilla": {}, "noise": {}}
    assert [(t["label"], t["seed"]) for t in saved["tuning"]] == [("vanilla", 0), ("noise", 0)]
    for r in runs:
        assert r["clean"] > 0.9  # the CNN really trained on the MNIST files (measured: 100 % for both)
        assert set(r["evals"]) == {"sigma_d=0.3", "lognormal s=0.3"}
        for ev in r["evals"].values():
            assert 0.0 <= ev["kpp1"] <= ev["mean"] <= 1.0 and ev["ci_lo"] <= ev["mean"] <= ev["ci_hi"]
    table = out.read_text()
    assert table.startswith("Robust training methods on mnist") and "| vanilla |" in table and "| noise |" in table


# ---------------------------------------------------------------------------------- the protocol, no training


def test_paired_difference_and_its_t_interval_by_hand():
    b = _bench()
    base = {"seeds": [0, 1, 2], "cond": {"c": {"per_seed": [0.50, 0.60, 0.70]}}}
    a = {"seeds": [2, 0, 1], "cond": {"c": {"per_seed": [0.72, 0.51, 0.63]}}}  # paired by seed, not by position
    mean, half, n = b.paired(a, base, "c")
    # diffs 0.01, 0.03, 0.02: mean 0.02, sd 0.01, t(0.975, 2) = 4.3027 -> half-width 4.3027 * 0.01 / sqrt(3)
    assert n == 3 and mean == pytest.approx(0.02, abs=1e-12)
    assert half == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert math.isnan(b.paired(a, base | {"seeds": [5, 6, 7]}, "c")[0])


def test_grid_and_choice_on_validation():
    b = _bench()
    assert b.grid_points({}) == [{}]
    assert b.grid_points({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert b._grid_values("1e-4,1e-2") == [1e-4, 1e-2] and b._grid_values("[1, 10]") == [1, 10]
    runs = [
        {"label": "m", "options": {"lam": 1}, "seed": 0, "val_noisy": 0.5},
        {"label": "m", "options": {"lam": 1}, "seed": 1, "val_noisy": 0.7},  # mean 0.6
        {"label": "m", "options": {"lam": 2}, "seed": 0, "val_noisy": 0.9},
        {"label": "m", "options": {"lam": 2}, "seed": 1, "val_noisy": 0.2},  # mean 0.55
        {"label": "m", "options": {"lam": 3}, "seed": 0, "val_noisy": 0.6},
        {"label": "m", "options": {"lam": 3}, "seed": 1, "val_noisy": 0.6},  # mean 0.6: a tie, the earlier wins
        {"label": "v", "options": {}, "seed": 0, "val_noisy": 0.1},
    ]
    assert b.choose(runs) == {"m": {"lam": 1}, "v": {}}


def test_main_tunes_on_validation_and_reads_the_test_split_only_for_the_choice(tmp_path, monkeypatch):
    """main() with training and test evaluation replaced by fakes that record what they were given."""
    b = _bench()
    trained: list[dict] = []

    def fake_train(job):
        trained.append(job)
        lam = job["options"].get("lam", 0.0)
        # correctnet's validation score peaks at lam = 1e-3; test accuracies (below) would prefer 1e-2
        score = {1e-4: 0.5, 1e-3: 0.8, 1e-2: 0.6}.get(lam, 0.4) + 0.01 * job["seed"]
        return {k: job[k] for k in ("label", "seed", "options", "model_path")} | {
            "train_s": 1.0,
            "peak_mem_bytes": 1,
            "val_clean": 0.9,
            "val_noisy": score,
        }

    tested: list[dict] = []

    def fake_test(job):
        tested.extend(job["runs"])
        out = []
        for r in job["runs"]:
            acc = {"vanilla": 0.5, "noise": 0.6}.get(r["label"], 0.7) + 0.02 * r["seed"] ** 2
            ev = {"mean": acc, "ci_lo": acc - 0.1, "ci_hi": acc + 0.1, "kpp1": acc - 0.2, "ekl": 0.1}
            out.append(
                {"label": r["label"], "seed": r["seed"], "train_s": 1.0, "peak_mem_bytes": 1, "clean": 0.9}
                | {"evals": {c: dict(ev) for c in job["evals"]}, "options": r["options"], "val_noisy": r["val_noisy"]}
            )
        return out

    monkeypatch.setattr(b, "run_isolated", fake_train)
    monkeypatch.setattr(b, "evaluate_chosen", fake_test)
    out, raw = tmp_path / "t.md", tmp_path / "r.json"
    args = ["--methods", "noise,correctnet", "--seeds", "3", "--epochs", "1", "--sigmas", "0.3"]
    assert b.main([*args, "--out", str(out), "--json", str(raw)]) == 0
    assert sorted({j["val_fraction"] for j in trained}) == [0.1] and len(trained) == 3 * (1 + 1 + 3)
    assert sorted(j["options"].get("lam") for j in trained if j["label"] == "correctnet") == sorted(
        [1e-4, 1e-3, 1e-2] * 3
    )
    saved = json.loads(raw.read_text())
    assert saved["chosen"]["correctnet"] == {"lam": 1e-3}  # the validation choice
    # the test split is evaluated once per method and seed, for the chosen options only
    assert sorted((r["label"], r["seed"]) for r in tested) == sorted(
        (lab, s) for lab in ("vanilla", "noise", "correctnet") for s in range(3)
    )
    assert all(r["options"] == {"lam": 1e-3} for r in tested if r["label"] == "correctnet")
    table = out.read_text()
    assert "correctnet lam from [0.0001, 0.001, 0.01] -> 0.001" in table
    assert "diff vs vanilla" in table and "diff vs noise" in table
    # correctnet - vanilla = 0.2 at every seed: mean +20.0 pp, zero spread, so a zero-width interval
    assert "| correctnet | +20.0 [+20.0, +20.0] | +20.0 [+20.0, +20.0] |" in table
    with pytest.raises(SystemExit):
        b.main([*args, "--tune", "dat:alpha=1,10"])  # dat is not among --methods
    with pytest.raises(SystemExit):
        b.main([*args, "--val-fraction", "0"])  # the choices need a validation split


# ------------------------------------------------------------------- epoch times and the paired overhead benchmark


def _overhead():
    _bench()  # puts benchmarks/ on sys.path
    return importlib.import_module("train_overhead")


def test_epoch_time_is_the_median_after_the_first_epoch():
    b = _bench()
    hist = [{"time_s": 9.0}, {"time_s": 1.0}, {"time_s": 3.0}, {"time_s": 2.0}]
    assert b.epoch_seconds(hist) == 2.0  # the first epoch's one-off 9 s is left out
    assert b.epoch_seconds(hist[:3]) == 2.0 and b.epoch_seconds(hist[:1]) == 9.0
    assert math.isnan(b.epoch_seconds([]))


def test_overhead_device_choice_rounds_and_ratios():
    t = _overhead()
    assert str(t.pick_device("auto", cuda_available=False)) == "cpu"
    assert str(t.pick_device("auto", cuda_available=True)) == "cuda"  # the GPU variant when one is lent
    assert str(t.pick_device("cuda:1", cuda_available=True)) == "cuda:1"
    with pytest.raises(ValueError, match="no CUDA GPU is visible here; use --device cpu"):
        t.pick_device("cuda", cuda_available=False)
    with pytest.raises(ValueError, match="give auto, cpu or cuda"):
        t.pick_device("gpu0", cuda_available=False)
    for bad in (["--device", "gpu0"], ["--rounds", "0"], ["--methods", "dat,sideways"]):
        with pytest.raises(SystemExit):  # argparse's one-line error, before any training
            t.main(bad)
    # vanilla first, then last: a drift in the machine's speed lands on both sides of each ratio in turn
    assert t.round_orders(["vanilla", "a", "b"], 3) == [["vanilla", "a", "b"], ["b", "a", "vanilla"]] + [
        ["vanilla", "a", "b"]
    ]
    r = t.ratios({"vanilla": [1.0, 2.0], "a": [2.0, 3.0]})
    assert r == {"vanilla": [1.0, 1.0], "a": [2.0, 1.5]}  # per round, not a ratio of sums
    f = t.MethodFigures(
        "a", wall_s=[2.0, 3.0, 9.0], cpu_s=[1.0, 1.0, 1.0], wall_ratio=[2.0, 1.5, 4.0], cpu_ratio=[1.0] * 3
    )
    s = f.summary()
    assert (s["wall_ratio_min"], s["wall_ratio_median"], s["wall_s_median"]) == (1.5, 2.0, 3.0)


def test_cpu_peak_memory_is_the_allocators_peak_above_the_start():
    import torch

    t = _overhead()
    keep = torch.ones(1000)  # allocated before: not counted, whatever happens to it

    def work() -> None:
        a = torch.empty(250_000)  # 1 MB
        b = torch.empty(500_000)  # 2 MB, both alive: the peak, 3 MB
        del a, b
        c = torch.empty(100_000)  # 0.4 MB after the peak
        del c

    peak = t.peak_bytes(work, torch.device("cpu"))
    # exactly the two live blocks (the allocator reports requested bytes); small temporaries of the profiler's own
    # bookkeeping, if any, stay far below the 0.4 MB of c
    assert 3_000_000 <= peak < 3_400_000
    assert keep.sum() == 1000
