"""The demo's deployment line says measured against noise-free and predicted, write cycles, and what defect-aware
placement saved (issue 16 item 6)."""

from __future__ import annotations

from hil.pipeline.demo import _deploy_headline


def _pct(v: float, unit: str) -> str:
    return f"{100 * v:.1f} %"


def test_the_deploy_headline_reports_the_placement_savings() -> None:
    d = {
        "swim_fraction": 0.1,
        "measured": 0.869,
        "clean": 0.892,
        "predicted_mean": 0.805,
        "predicted_kpp1": 0.547,
        "predicted_interval": (0.761, 0.842),
        "inside_interval": False,
        "write_cycles": 12848.0,
        "write_cycles_full_wv": 42888.0,
        "placement": {
            "defect_aware": True,
            "defective_cells": {"healthy": 998, "unformable": 21, "stuck_on": 5, "stuck_off": 0},
            "naive": {"residual_error": 50.7},
            "placed": {"residual_error": 3.35},
        },
    }
    text = _deploy_headline(d, _pct)
    assert "measured 86.9 % (noise-free 89.2 %) vs predicted 80.5 % (90% interval 76.1 % to 84.2 %), OUTSIDE it" in text
    assert "per-device errors" not in text  # no error comparison given
    d["measured_calibrated"] = 0.878
    assert "measured 86.9 %, 87.8 % after column calibration (noise-free 89.2 %)" in _deploy_headline(d, _pct)
    d["errors"] = {"consistent": True, "ks_p": 0.314, "devices": 1980}
    assert "per-device errors consistent with the profile (KS p 0.31, 1980 devices)" in _deploy_headline(d, _pct)
    assert "write cycles 12848 = 0.30x full write-verify" in text  # 12848 / 42888 = 0.2996
    assert "summed weight error of 3.35 max|W| on the 26 known defective cells (naive placement 50.7)" in text
    d["placement"] = None  # a plan without defect-aware placement (or an old one) says nothing about it
    assert "placement" not in _deploy_headline(d, _pct)
