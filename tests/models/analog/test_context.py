"""Analog tiles on a model: restored forwards, ideal == digital, seeded per-MVM noise, chunking, engines, drift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from models.analog import analog_config, analog_tiles
from models.analog.forward import compensation, tile_scales
from models.architectures import build_model
from models.montecarlo import evaluate_mc
from models.noise.factory import noise_from_spec

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8, channels=[4, 8], hidden=16).eval()
    x = torch.randn(120, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(-1)
    return model, x, y


def test_forwards_are_restored_and_the_class_untouched(setup):
    model, x, _ = setup
    with torch.no_grad():
        ref = model(x)
        with analog_tiles(model, "ibm_table1", calibration=x) as tiles:
            assert all("forward" in vars(m) for m in tiles.modules.values())
            assert not torch.equal(model(x), ref)
        assert all("forward" not in vars(m) for m in model.modules())
        assert torch.equal(model(x), ref)
    assert type(model).__name__ == "SmallCNN"


def test_ideal_tiles_are_the_digital_forward(setup):
    model, x, y = setup
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.5})
    digital = evaluate_mc(model, x, y, noise, 6, seed=1)
    with torch.no_grad():
        ref = model(x)
    for engine in ("fold", "vmap"):
        with analog_tiles(model, "ideal") as tiles:
            with torch.no_grad():
                assert torch.equal(model(x), ref)
            r = evaluate_mc(model, x, y, tiles.draws(noise), 6, seed=1, engine=engine)
        d = digital if engine == "fold" else evaluate_mc(model, x, y, noise, 6, seed=1, engine="vmap")
        assert np.array_equal(r.accuracies, d.accuracies) and r.ekl == d.ekl


def test_per_mvm_noise_is_fresh_each_read_and_seeded(setup):
    model, x, _ = setup
    with torch.no_grad(), analog_tiles(model, "ibm_table1", calibration=x, seed=5) as tiles:
        a, b = model(x), model(x)
        tiles.generator.manual_seed(5)
        c = model(x)
    assert not torch.equal(a, b)  # a new draw of the output and weight noise at every MVM
    assert torch.equal(a, c)  # the same numbers for the same seed


def test_monte_carlo_is_independent_of_chunking_and_engine(setup):
    model, x, y = setup
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    # ADC off: the logits move continuously, so identical noise gives identical statistics up to float rounding
    cfg = analog_config("ibm_table1", adc_bits=None, dac_bits=None)
    with analog_tiles(model, cfg, calibration=x) as tiles:
        a = evaluate_mc(model, x, y, tiles.draws(noise), 10, seed=3, draws_per_chunk=10, engine="fold")
        b = evaluate_mc(model, x, y, tiles.draws(noise), 10, seed=3, draws_per_chunk=3, batch_size=120, engine="fold")
        c = evaluate_mc(model, x, y, tiles.draws(noise), 10, seed=3, draws_per_chunk=4, engine="vmap")
        d = evaluate_mc(model, x, y, tiles.draws(noise), 10, seed=4, draws_per_chunk=10, engine="fold")
    assert np.array_equal(a.accuracies, b.accuracies) and np.array_equal(a.accuracies, c.accuracies)
    assert a.ekl == pytest.approx(b.ekl, rel=1e-5) and a.ekl == pytest.approx(c.ekl, rel=1e-5)
    assert not np.array_equal(a.accuracies, d.accuracies)


def test_full_table1_engines_agree(setup):
    model, x, y = setup
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    with analog_tiles(model, "ibm_table1", calibration=x) as tiles:
        a = evaluate_mc(model, x, y, tiles.draws(noise), 8, seed=2, engine="fold", draws_per_chunk=3)
        b = evaluate_mc(model, x, y, tiles.draws(noise), 8, seed=2, engine="vmap", draws_per_chunk=8)
        auto = evaluate_mc(model, x, y, tiles.draws(noise), 8, seed=2)
    # the same noise per draw; vmap computes out of place, so a value on an ADC rounding edge may land one
    # level apart, which flips a prediction only at a near tie: at most one of the 120 samples per draw here
    assert np.abs(a.accuracies - b.accuracies).max() <= 1 / len(y)
    assert np.array_equal(a.accuracies, auto.accuracies)  # auto picks the folded layout for this CNN


class _ChannelMixing(nn.Module):
    """Not foldable (softmax over channels): Monte Carlo falls back to vmap, analog too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        return self.fc(torch.softmax(self.conv(x), dim=1).flatten(1))


def test_unfoldable_model_runs_on_vmap():
    torch.manual_seed(1)
    model = _ChannelMixing().eval()
    x = torch.randn(20, 1, 8, 8)
    y = torch.randint(0, 10, (20,))
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    with analog_tiles(model, "ibm_table1", calibration=x) as tiles:
        auto = evaluate_mc(model, x, y, tiles.draws(noise), 4, seed=0)
        forced = evaluate_mc(model, x, y, tiles.draws(noise), 4, seed=0, engine="vmap")
    assert np.array_equal(auto.accuracies, forced.accuracies)


def test_global_drift_compensation_recovers_a_planted_scale():
    # normalised weights +-1, the draw drifted to 0.6 w; the gain sum r^2 / sum r * read pools 512 x 16 one-hot
    # reads with noise sigma = sqrt(0.04^2 + 0.0175^2 |w| + ADC step^2 / 12) ~ 0.047, so sum r * read has a
    # relative standard error of 0.047 * sqrt(8192) / (0.6 * 8192) = 0.1 %: 1 % is ten of them
    torch.manual_seed(0)
    lin = nn.Linear(512, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(0.5 * torch.sign(torch.randn(16, 512)))
    cfg = analog_config("ibm_table1")
    with analog_tiles(lin, cfg, input_ranges={"": 1.0}) as tiles:
        plan, clean = tiles.plans[""], lin.weight.detach()
        gam = tile_scales(plan, clean, cfg)
        comp = compensation(plan, cfg, 0.6 * clean, clean, gam, tiles._normal)
        assert comp is not None and len(comp) == 1
        assert comp[0].shape == (16,) and torch.allclose(comp[0], comp[0][:1].expand(16))  # one per tile (global)
        assert float(comp[0][0]) == pytest.approx(1 / 0.6, rel=0.01)
        # end to end: the drifted chip with compensation reads like the programmed one. Inputs +-0.15 keep the sums
        # (std sqrt(512 / 3) * 0.15 = 2) inside the bound 10; the noise (std ~0.05, x 1/0.6 on the drifted chip)
        # makes a mean relative error of ~5 %, the uncompensated drift one of 40 %
        x = (torch.rand(64, 512) * 2 - 1) * 0.15
        with torch.no_grad():
            ref = lin(x)
            drifted = functional_call(lin, {"weight": 0.6 * clean}, (x,))
        err = (drifted - ref).abs().mean() / ref.abs().mean()
        assert float(err) < 0.1


def test_compensation_ignores_zero_mean_weight_noise():
    # programming noise of std 0.3 (normalised) on +-1 weights leaves the gain at 1: sum r n has a relative
    # standard error of sqrt(0.3^2 + 0.047^2) / sqrt(8192) = 0.34 %; 2 % is six of them
    torch.manual_seed(0)
    lin = nn.Linear(512, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(0.5 * torch.sign(torch.randn(16, 512)))
    cfg = analog_config("ibm_table1")
    with analog_tiles(lin, cfg, input_ranges={"": 1.0}) as tiles:
        clean = lin.weight.detach()
        noisy = clean + 0.15 * torch.randn(16, 512)
        comp = compensation(tiles.plans[""], cfg, noisy, clean, tile_scales(tiles.plans[""], clean, cfg), tiles._normal)
    assert comp is not None and float(comp[0][0]) == pytest.approx(1.0, abs=0.02)


def test_column_compensation_recovers_column_scales():
    # per column the gain pools 512 reads: relative standard error 0.048 * sqrt(512) / (512 s) <= 0.42 % at
    # s = 0.5; 2 % is five of them
    torch.manual_seed(0)
    lin = nn.Linear(512, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(0.5 * torch.sign(torch.randn(16, 512)))
    s = torch.linspace(0.5, 1.0, 16)[:, None]
    cfg = analog_config("ibm_table1", drift_compensation="column")
    with analog_tiles(lin, cfg, input_ranges={"": 1.0}) as tiles:
        clean = lin.weight.detach()
        comp = compensation(
            tiles.plans[""], cfg, s * clean, clean, tile_scales(tiles.plans[""], clean, cfg), tiles._normal
        )
    assert comp is not None
    assert torch.allclose(comp[0], 1 / s[:, 0], rtol=0.02)


def test_missing_input_ranges_are_a_one_line_error(setup):
    model, x, _ = setup
    with pytest.raises(ValueError, match="need input_ranges= .* or calibration="):
        analog_tiles(model, "ibm_table1").__enter__()
    with pytest.raises(ValueError, match=r"missing: classifier.3"):
        with analog_tiles(
            model, "ibm_table1", input_ranges={"features.0": 1.0, "features.3": 1.0, "classifier.1": 1.0}
        ):
            pass
    with pytest.raises(ValueError, match="no layer named head"):
        with analog_tiles(model, "ibm_table1", calibration=x, digital=["head"]):
            pass
