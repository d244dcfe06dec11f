"""The aihwkit comparison benchmark: a clear exit without aihwkit; with it, each path runs the noise it names."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module("vs_aihwkit")


def test_without_aihwkit_it_says_how_to_get_it(monkeypatch, capsys):
    bench = _bench()
    monkeypatch.setitem(sys.modules, "aihwkit", None)  # import aihwkit raises ImportError
    monkeypatch.setattr(sys, "argv", ["vs_aihwkit.py", "--draws", "1"])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert "aihwkit is not installed" in str(exc.value) and "pip install aihwkit" in str(exc.value)


@pytest.mark.parametrize("noise", ["gaussian", "profile", "fitted"])
def test_each_aihwkit_draw_is_a_fresh_chip_of_the_named_noise(noise):
    """The path's noise model, window and time as the module says (the export's, for the profile paths), perfect
    IO, no drift compensation; and every draw programs a new chip (two draws differ, neither is the clean one)."""
    pytest.importorskip("aihwkit", reason="aihwkit is not installed (optional; see benchmarks/vs_aihwkit.py)")
    from aihwkit.inference import PCMLikeNoiseModel, ReRamWan2022NoiseModel
    from aihwkit.nn.conversion import convert_to_analog

    from calibration.aihwkit_export import export_aihwkit
    from calibration.profile import NoiseProfile
    from models.architectures import MLP

    bench = _bench()
    setup = bench.aihwkit_setup(noise)
    rpu = setup.rpu_config
    assert rpu.forward.is_perfect and rpu.drift_compensation is None and rpu.mapping.weight_scaling_omega == 1.0
    conv = rpu.noise_model.g_converter
    if noise == "gaussian":
        assert isinstance(rpu.noise_model, PCMLikeNoiseModel) and setup.t_inference is None
        assert list(rpu.noise_model.prog_coeff) == [bench.GAUSSIAN_SIGMA * conv.g_max] and conv.g_min == 0.0
    else:
        exp = export_aihwkit(NoiseProfile.from_paper("ibm_reram", time="1s"))
        assert isinstance(rpu.noise_model, ReRamWan2022NoiseModel) and setup.t_inference == bench.T_DAY_S
        assert (conv.g_min, conv.g_max) == (exp["g_min"], exp["g_max"])
        assert repr(setup.t_inference) in exp["ReRamWan2022NoiseModel"]["coeff_dic"]  # a time aihwkit has
    assert ("the rank-10 spatial field" in setup.dropped) == (noise == "fitted")
    torch.manual_seed(0)
    model = MLP(64, 10, (32,)).eval()
    analog = convert_to_analog(model, rpu).eval()
    layer = next(analog.analog_layers())
    clean = layer.get_weights()[0].clone()
    draws = []
    for _ in range(2):
        analog.program_analog_weights()
        if setup.t_inference is not None:
            analog.drift_analog_weights(setup.t_inference)
        draws.append(layer.get_weights()[0].clone())
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], clean)
    calls = {"program": 0, "drift": []}
    program, drift = analog.program_analog_weights, analog.drift_analog_weights

    def counted_program(*a, **k):
        calls["program"] += 1
        return program(*a, **k)

    def counted_drift(t, *a, **k):
        calls["drift"].append(t)
        return drift(t, *a, **k)

    analog.program_analog_weights, analog.drift_analog_weights = counted_program, counted_drift
    assert bench.aihwkit_draws(analog, torch.randn(8, 64), torch.randint(0, 10, (8,)), 3, setup.t_inference) > 0
    assert calls["program"] == 3  # a new chip per draw
    assert calls["drift"] == ([] if setup.t_inference is None else [setup.t_inference] * 3)
