"""On the simulated board, read-back accuracy agrees with the Monte Carlo prediction from the profile
fitted on the same chip (the demo pipeline, end to end)."""

from __future__ import annotations

import json

import pytest

from hil.pipeline.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_measured_accuracy_is_inside_the_predicted_spread(tmp_path) -> None:
    cfg = DemoConfig(out=tmp_path / "demo", seed=1, quick=True, plots=False, epochs=15, mc_draws=200)
    run_demo(cfg, echo=lambda _s: None)
    stages = {s["stage"]: s for s in json.loads((cfg.out / "summary.json").read_text())}
    d = stages["deploy"]
    # SWIM verified 10% of the weights and spent far fewer write cycles than full write-verify
    assert d["write_cycles"] < 0.6 * d["write_cycles_full_wv"]
    assert d["within_spread"], (d["measured"], d["predicted_mean"], d["predicted_std"], d["predicted_kpp1"])
