"""IBM-style HWA training: ramp, clipping to the out-scales, remapping, folding of learned scales, drop-connect."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods import TrainContext, get_method
from models.methods.ibm_hwa import column_scales, ramp_factor
from models.noise.apply import clean_weights
from models.noise.factory import noise_from_spec
from models.training import train

torch.set_num_threads(1)


def _ctx(model, noise, n_batches=10):
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(n_batches)]
    return TrainContext(
        model=model,
        noise=noise,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        config=TrainConfig(),
        num_classes=3,
        train_loader=batches,
    )


def test_ramp_is_linear_then_flat():
    assert [ramp_factor(s, 4) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert ramp_factor(0, 0) == 1.0


def test_column_scales_are_row_max_abs():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    assert torch.equal(column_scales(w), torch.tensor([[3.0], [0.5]]))
    assert column_scales(torch.randn(5, 2, 3, 3)).shape == (5, 1, 1, 1)


def test_effective_weights_without_noise_equal_w_and_gamma_gets_a_gradient():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    m = get_method("ibm_hwa", noise_scale=0.0, drop_connect=0.0)
    ctx = _ctx(model, noise_from_spec({"family": "gaussian", "sigma": 0.3}))
    m.prepare(ctx)
    eff = m.effective_weights(ctx, clean_weights(model))
    assert torch.allclose(eff["weight"], model.weight)
    m2 = get_method("ibm_hwa", drop_connect=0.0, ramp_batches=0)
    ctx2 = _ctx(model, noise_from_spec({"family": "gaussian", "sigma": 0.3}))
    m2.prepare(ctx2)
    m2.training_step(ctx2, torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))
    assert m2.gamma["weight"].grad is not None and float(m2.gamma["weight"].grad.abs().sum()) > 0
    assert len(ctx2.optimizer.param_groups) == 2  # out-scales are trained


def test_clipping_remapping_and_folding():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    m = get_method("ibm_hwa", remap_every=3)
    ctx = _ctx(model, noise_from_spec({"family": "gaussian", "sigma": 0.3}))
    m.prepare(ctx)
    g = m.gamma["weight"]
    assert torch.equal(g.detach(), column_scales(model.weight))
    with torch.no_grad():
        model.weight.mul_(2.0)  # optimizer pushed |W| past gamma
    m._sync(model, step=1)
    assert bool((model.weight.abs() <= g + 1e-7).all())  # fixed-value clipping |W_hat| <= 1
    with torch.no_grad():
        before = model.weight.clone()
        g.mul_(0.5)  # a learned change of the out-scales
    m._sync(model, step=2)
    assert torch.allclose(model.weight, 0.5 * before)  # folded: W_hat unchanged
    with torch.no_grad():
        model.weight[0].mul_(0.1)
    m._sync(model, step=3)  # remap step
    assert torch.allclose(g.detach(), column_scales(model.weight))


def test_drop_connect_rate():
    torch.manual_seed(0)
    model = nn.Linear(200, 100)
    m = get_method("ibm_hwa", noise_scale=0.0, drop_connect=0.1)
    ctx = _ctx(model, noise_from_spec({"family": "gaussian", "sigma": 0.3}))
    m.prepare(ctx)
    eff = m.effective_weights(ctx, clean_weights(model))["weight"]
    assert float((eff == 0).float().mean()) == pytest.approx(0.1, abs=0.01)


def test_noise_is_scaled_and_ramped():
    torch.manual_seed(0)
    model = nn.Linear(200, 100)
    base = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    m = get_method("ibm_hwa", noise_scale=2.0, drop_connect=0.0, ramp_batches=4)
    ctx = _ctx(model, base)
    m.prepare(ctx)
    w = clean_weights(model)
    std = base.noise_std({"weight": model.weight.detach()})["weight"]
    for step, expected in ((0, 0.5), (10, 2.0)):
        ctx.step = step
        dev = (m.effective_weights(ctx, w)["weight"] - model.weight).detach()
        assert float((dev / std).std()) == pytest.approx(expected, rel=0.05)


def test_distill_needs_a_teacher():
    m = get_method("ibm_hwa", distill=True)
    with pytest.raises(ValueError, match="floating-point teacher"):
        m.prepare(_ctx(nn.Linear(6, 3), noise_from_spec({"family": "gaussian", "sigma": 0.3})))


@pytest.mark.parametrize("opts", [{"noise_scale": 1.0}, {"noise_scale": 1.0, "distill": True, "pretrain_epochs": 1}])
def test_trains_on_digits_and_exports_clipped_weights(opts):
    d = load_dataset("digits")
    ds = Dataset("digits", d.x_train[:384], d.y_train[:384], d.x_test[:120], d.y_test[:120], 10)
    cfg = TrainConfig(
        method="ibm_hwa",
        method_options=opts,
        noise={"family": "gaussian", "sigma": 0.3},
        epochs=3,
        lr=1e-2,
        progress=False,
        val_noise_draws=2,
    )
    res = train(cfg, dataset=ds, log=lambda _s: None)
    assert res.history[-1]["val_acc"] > 0.5
    gam = res.checkpoint["train_state"]["method"]["gamma"]
    for name, w in clean_weights(res.model).items():
        assert bool((w.detach().abs() <= gam[name] * (1 + 1e-6)).all())
    assert set(res.model.state_dict()) == set(res.checkpoint["state_dict"])
