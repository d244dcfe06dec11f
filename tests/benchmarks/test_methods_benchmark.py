"""The methods benchmark on a local MNIST folder (small learnable files written here), end to end."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np

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


def test_methods_benchmark_on_local_mnist(tmp_path):
    _learnable_mnist(tmp_path / "MNIST" / "raw", 300, 100)
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
    runs = json.loads(raw.read_text())["runs"]
    assert [r["label"] for r in runs] == ["vanilla", "noise"]
    for r in runs:
        assert r["clean"] > 0.9  # the CNN really trained on the MNIST files
        assert set(r["evals"]) == {"sigma_d=0.3", "lognormal s=0.3"}
        for ev in r["evals"].values():
            assert 0.0 <= ev["kpp1"] <= ev["mean"] <= 1.0 and ev["ci_lo"] <= ev["mean"] <= ev["ci_hi"]
    table = out.read_text()
    assert table.startswith("Robust training methods on mnist") and "| vanilla |" in table and "| noise |" in table
