"""TRICE: censored training noise never exceeds lam*sigma, re-centring, the KPP search, and a short training run."""

from __future__ import annotations

import pytest
import torch

from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods import TrainContext, get_method
from models.methods.trice import TRICE, CensoredDeviation, censored
from models.noise.factory import noise_from_spec
from models.noise.families import CensoredNoise, censored_mean
from models.training import train
from tests.helpers.contexts import digits_context, sgd_context

torch.set_num_threads(1)


def _weights():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(16, 8), "b.weight": torch.randn(4, 3, 3, 3)}


@pytest.mark.parametrize("recentre", [False, True])
def test_gaussian_samples_never_exceed_the_bound(recentre):
    base = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    lam = 0.5
    tr = censored(base, lam, recentre)
    assert isinstance(tr, CensoredNoise)
    w = _weights()
    std = base.noise_std(w)
    draws = tr.sample_batch(w, 400, torch.Generator().manual_seed(1))
    shift = censored_mean(lam) if recentre else 0.0
    for k in w:
        dev = draws[k] - w[k]
        assert bool((dev <= (lam - shift) * std[k] + 1e-6).all())
        # the bound is reached (censoring is active), and the left tail is untouched
        assert float((dev >= (lam - shift) * std[k] - 1e-6).float().mean()) == pytest.approx(0.3085, abs=0.02)
        assert float((dev / std[k]).min()) < -2.5


def test_recentred_noise_has_zero_mean_and_plain_has_the_censored_mean():
    base = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    w = _weights()
    std = base.noise_std(w)["a.weight"]
    for recentre, expected in ((False, censored_mean(1.0)), (True, 0.0)):
        d = censored(base, 1.0, recentre).sample_batch(w, 2000, torch.Generator().manual_seed(2))["a.weight"]
        z = ((d - w["a.weight"]) / std).mean()
        assert float(z) == pytest.approx(expected, abs=0.01)


def test_non_gaussian_base_is_censored_too():
    ln = noise_from_spec({"family": "lognormal", "sigma": 0.4})
    tr = censored(ln, 1.0, False)
    assert isinstance(tr, CensoredDeviation)
    w = _weights()
    std = ln.noise_std(w)
    draws = tr.sample_batch(w, 300, torch.Generator().manual_seed(3))
    for k in w:
        assert bool(((draws[k] - w[k]) <= std[k] + 1e-6).all())
    assert isinstance(tr.scaled(2.0), CensoredDeviation)


def test_training_noise_of_the_method_is_censored_and_gradients_reach_the_weights():
    model = torch.nn.Linear(8, 3)
    ctx = sgd_context(model, noise_from_spec({"family": "gaussian", "sigma": 0.3}), num_classes=3)
    m = get_method("trice", lam=1.5, recentre=True)
    m.prepare(ctx)
    assert isinstance(m.noise, CensoredNoise) and m.noise.lam == 1.5 and m.noise.recentre
    m.training_step(ctx, torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert model.weight.grad is not None and float(model.weight.grad.abs().sum()) > 0


def test_trains_on_digits():
    # 768 samples: the loop validates on a split carved from them (~77), and still trains on ~690
    d = load_dataset("digits")
    ds = Dataset("digits", d.x_train[:768], d.y_train[:768], d.x_test[:120], d.y_test[:120], 10)
    cfg = TrainConfig(
        method="trice", noise={"family": "gaussian", "sigma": 0.3}, epochs=3, lr=1e-2, progress=False, val_noise_draws=2
    )
    h = train(cfg, dataset=ds, log=lambda _s: None).history
    assert h[-1]["loss"] < h[0]["loss"] and h[-1]["val_acc"] > 0.5


def _batch(ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(ctx.train_loader, list)
    return ctx.train_loader[0]


def test_search_finds_the_planted_optimum_end_to_end():
    """Training noise 60 or 80 times the deployment noise cannot learn digits: scale 1 is the planted best.

    Measured: KPP 0.26 for scale 1 against 0.075 for the others (chance is 0.1) over 50 validation draws;
    a 0.1 margin is over three binomial standard errors of a 200-sample accuracy (sqrt(.25*.75/200) = 0.03).
    The best sits in the middle of the grid, so the tie rule (earlier wins) cannot pick it by accident.
    """
    ctx = digits_context()
    before = {k: v.clone() for k, v in ctx.raw_model.state_dict().items()}
    m = TRICE(search=True, lam_grid="1.5", scale_grid="60,1,80", search_epochs=3, search_draws=50)
    m.prepare(ctx)
    r = m.search_result
    assert r is not None and [c["scale"] for c in r.candidates] == [60.0, 1.0, 80.0]
    assert r.best == {"lam": 1.5, "scale": 1.0}
    assert r.scores[1] > max(r.scores[0], r.scores[2]) + 0.1
    # the run trains with the choice, from the untouched initial weights
    assert isinstance(m.noise, CensoredNoise) and m.noise.lam == 1.5 and (m.lam, m.scale) == (1.5, 1.0)
    assert all(torch.equal(ctx.raw_model.state_dict()[k], before[k]) for k in before)
    logs = m.training_step(ctx, *_batch(ctx))
    assert (logs["lam"], logs["scale"]) == (1.5, 1.0)
    # the choice is saved with the run and comes back on resume, without a second search
    state = m.state_dict()
    again = TRICE(search=True, lam_grid="1.5", scale_grid="60,1,80", search_epochs=3)
    resumed = digits_context()
    resumed.resuming = True
    again.prepare(resumed)
    assert again.search_result is None and (again.lam, again.scale) == (1.0, 1.0)
    again.load_state_dict(state)
    assert (again.lam, again.scale) == (1.5, 1.0) and again.search_result == r
    assert isinstance(again.noise, CensoredNoise) and again.noise.lam == 1.5


@pytest.mark.parametrize(
    "opts, val, message",
    [
        ({}, False, "method 'trice': the search needs a validation split"),
        ({"kpp": 0}, True, r"kpp is a percentile in \(0, 100\], got 0"),
        ({"scale_grid": "1,-2"}, True, r"scale_grid values must be > 0, got \[-2.0\]"),
    ],
)
def test_search_refuses_bad_input_in_one_line(opts, val, message):
    m = TRICE(search=True, search_epochs=1, search_draws=2, **opts)
    with pytest.raises(ValueError, match=message) as info:
        m.prepare(digits_context(val=val))
    assert "\n" not in str(info.value)
