"""NeFT OVF / IRS: feedback combination, oriented noise levels, snapshot taps, exported backbone, training."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import build_model
from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods import TrainContext, get_method
from models.methods.neft import (
    find_snapshot_blocks,
    irs_gammas,
    negative_feedback_logits,
    oriented_factors,
    ovf_gammas,
    tap_outputs,
)
from models.noise.base import WeightNoise
from models.noise.factory import noise_from_spec
from models.training import train

torch.set_num_threads(1)


@dataclass
class FixedNoise(WeightNoise):
    """Deterministic 'noise': W + scale * D[name] with fixed D (so losses can be computed by hand)."""

    deltas: dict
    scale: float = 1.0
    sigma: float = 0.2

    def sample_batch(self, weights, n_draws, generator=None):
        return {k: (w + self.scale * self.deltas[k]).expand(n_draws, *w.shape) for k, w in weights.items()}

    @property
    def magnitude(self):
        return self.sigma

    def scaled(self, factor):
        return FixedNoise(self.deltas, self.scale * factor, self.sigma)

    def noise_std(self, weights):
        return {k: (self.scale * self.deltas[k]).abs() for k in weights}


def _ctx(model, noise, batches=None, num_classes=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainContext(
        model=model,
        noise=noise,
        optimizer=opt,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        config=TrainConfig(epochs=1),
        num_classes=num_classes,
        train_loader=batches,
    )


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    d = load_dataset("digits")
    return Dataset("digits", d.x_train[:384], d.y_train[:384], d.x_test[:120], d.y_test[:120], 10)


def test_decay_factors_follow_the_paper():
    assert ovf_gammas(3) == pytest.approx([0.01, 0.1, 1.0])
    assert irs_gammas(4) == pytest.approx([1.0, 0.1, 0.01, 0.001])


def test_feedback_combination_matches_hand_computation():
    b = torch.tensor([[1.0, 2.0, 3.0]])
    outs = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])]
    got = negative_feedback_logits(b, outs, beta=0.1, gammas=ovf_gammas(3))
    expected = 0.25 * b - 0.25 * 0.1 * torch.tensor([[0.01, 0.1, 1.0]])
    assert torch.allclose(got, expected)


def test_oriented_factors_absolute_and_relative():
    g = noise_from_spec({"family": "gaussian", "sigma": 0.2})
    assert oriented_factors(g, 3, 0.05, 0.25) == pytest.approx([1.25, 1.5, 1.75])
    ln = noise_from_spec({"family": "lognormal", "sigma": 0.1})
    assert oriented_factors(ln, 2, 0.05, 0.25) == pytest.approx([1.5, 2.0])

    class NoSigma(FixedNoise):
        sigma = None  # type: ignore[assignment]

    ns = NoSigma({}, sigma=None)  # type: ignore[arg-type]
    assert oriented_factors(ns, 3, 0.05, 0.25) == pytest.approx([1.25, 1.5, 1.75])
    assert oriented_factors(ns, 2, 0.05, 0.1) == pytest.approx([1.1, 1.2])


def test_ovf_loss_equals_hand_computed_value_with_fixed_noise():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    d = {"weight": torch.randn(3, 4) * 0.1}
    noise = FixedNoise(d, 1.0, sigma=0.2)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    m = get_method("neft_ovf", beta=0.1)
    ctx = _ctx(model, noise)
    m.prepare(ctx)
    logs = m.training_step(ctx, x, y)
    W, bias = model.weight.detach(), model.bias.detach()
    out_b = x @ (W + d["weight"]).T + bias
    outs = [x @ (W + f * d["weight"]).T + bias for f in (1.25, 1.5, 1.75)]
    total = 0.25 * out_b - 0.25 * 0.1 * (0.01 * outs[0] + 0.1 * outs[1] + 1.0 * outs[2])
    assert logs["loss"] == pytest.approx(float(F.cross_entropy(total, y)), rel=1e-6)
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()


def test_ovf_output_scales_are_options():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    d = {"weight": torch.randn(3, 4) * 0.1}
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    m = get_method("neft_ovf", beta=0.01, n_feedback=2, delta_sigma=0.1, a_b=1.0, a_f=0.5)
    ctx = _ctx(model, FixedNoise(d, 1.0, sigma=0.2))
    m.prepare(ctx)
    logs = m.training_step(ctx, x, y)
    W, bias = model.weight.detach(), model.bias.detach()
    outs = [x @ (W + f * d["weight"]).T + bias for f in (1.0, 1.5, 2.0)]
    total = outs[0] - 0.5 * 0.01 * (0.1 * outs[1] + 1.0 * outs[2])
    assert logs["loss"] == pytest.approx(float(F.cross_entropy(total, y)), rel=1e-6)


def test_ovf_oriented_forwards_leave_batchnorm_stats_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.2})
    ref = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    m = get_method("neft_ovf")
    ctx = _ctx(model, noise)
    m.prepare(ctx)
    m.training_step(ctx, x, y)
    # exactly one BN update (the backbone forward), whatever the oriented forwards did
    assert int(model[1].num_batches_tracked) == 1


def test_irs_blocks_are_the_ends_of_same_depth_groups():
    x = torch.randn(2, 3, 8, 8)
    res = build_model("resnet18", in_channels=3, num_classes=10, image_size=8, width=4)
    assert [b[0] for b in find_snapshot_blocks(res, x, [])] == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert [b[1] for b in find_snapshot_blocks(res, x, [])] == [4, 8, 16, 32]
    cnn = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
    assert [b[0] for b in find_snapshot_blocks(cnn, torch.randn(2, 1, 8, 8), [])] == ["features.2", "features.5"]
    vgg = build_model("vgg8", in_channels=3, num_classes=10, image_size=8, width=4)
    assert [b[1] for b in find_snapshot_blocks(vgg, x, [])] == [4, 8, 16]
    assert find_snapshot_blocks(cnn, torch.randn(2, 1, 8, 8), ["features.0"]) == [("features.0", 16, 2)]
    with pytest.raises(ValueError, match="no module named"):
        find_snapshot_blocks(cnn, torch.randn(2, 1, 8, 8), ["nope"])


def test_irs_loss_matches_manual_snapshot_combination():
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8, channels=(4, 8), hidden=16)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    zero = FixedNoise({}, 0.0)
    zero.deltas = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    m = get_method("neft_irs", beta=0.01, hidden=8)
    ctx = _ctx(model, zero, batches=[(x, y)], num_classes=10)
    m.prepare(ctx)
    zero.deltas.update({n: torch.zeros_like(p) for n, p in m.heads.named_parameters()})
    logs = m.training_step(ctx, x, y)
    mods = dict(model.named_modules())
    with torch.no_grad():
        out, feats = tap_outputs(model, [mods["features.2"], mods["features.5"]], lambda: model(x))
        heads = m.heads(feats)
        total = (out - 0.01 * (1.0 * heads[0] + 0.1 * heads[1])) / 3
    assert logs["loss"] == pytest.approx(float(F.cross_entropy(total, y)), rel=1e-5)
    assert all(not mod._forward_hooks for mod in model.modules())


def test_irs_export_is_exactly_the_backbone(small_digits):
    cfg = TrainConfig(
        method="neft_irs",
        noise={"family": "gaussian", "sigma": 0.2},
        epochs=1,
        progress=False,
        val_noise_draws=1,
        lr=3e-3,
    )
    res = train(cfg, dataset=small_digits, log=lambda _s: None)
    fresh = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
    exported = res.model.state_dict()
    assert list(exported) == list(fresh.state_dict())
    saved = res.checkpoint["state_dict"]
    assert list(saved) == list(exported)
    for k in exported:
        assert torch.equal(saved[k], exported[k].cpu())
    assert all(not mod._forward_hooks for mod in res.model.modules())
    assert "heads" in res.checkpoint["train_state"]["method"]


@pytest.mark.parametrize("method", ["neft_ovf", "neft_irs"])
def test_methods_train_on_digits(method, small_digits):
    cfg = TrainConfig(
        method=method, noise={"family": "gaussian", "sigma": 0.2}, epochs=4, progress=False, val_noise_draws=2, lr=1e-2
    )
    res = train(cfg, dataset=small_digits, log=lambda _s: None)
    h = res.history
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in h)
    assert h[-1]["loss"] < h[0]["loss"]
    assert h[-1]["val_acc"] > 0.5  # far above the 10 % chance level after 4 short epochs


def test_ovf_needs_noise():
    m = get_method("neft_ovf")
    with pytest.raises(ValueError, match="needs a noise model"):
        m.prepare(_ctx(nn.Linear(2, 2), None))
