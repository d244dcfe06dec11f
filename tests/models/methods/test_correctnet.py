"""CorrectNet baseline: the Lipschitz regulariser by hand, its loss, and a short training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods import get_method
from models.methods.correctnet import lipschitz_regulariser, orthogonality_penalty
from models.noise.factory import noise_from_spec
from models.training import train
from tests.helpers.contexts import sgd_context

torch.set_num_threads(1)


def _direct(w: torch.Tensor) -> float:
    m = w.detach().reshape(w.shape[0], -1).double()
    return float(((m.T @ m - torch.eye(m.shape[1], dtype=torch.float64)) ** 2).sum())


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (10, 6), (5, 5), (3, 12)])
def test_penalty_equals_wtw_minus_identity(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape) * 0.3
    assert float(orthogonality_penalty(w)) == pytest.approx(_direct(w), rel=1e-5)


def test_penalty_gradient_matches_direct_formula():
    torch.manual_seed(1)
    w = (torch.randn(4, 2, 3, 3) * 0.3).requires_grad_(True)
    orthogonality_penalty(w).backward()
    w2 = w.detach().clone().requires_grad_(True)
    m = w2.reshape(4, -1)
    ((m.T @ m - torch.eye(18)) ** 2).sum().backward()
    assert torch.allclose(w.grad, w2.grad, atol=1e-5)


def test_orthogonal_matrix_has_zero_penalty():
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert float(orthogonality_penalty(q)) == pytest.approx(0.0, abs=1e-9)
    # rows orthonormal but fewer outputs than inputs: only the rank-deficiency constant remains
    assert float(orthogonality_penalty(q[:4].float())) == pytest.approx(2.0, abs=1e-4)


def test_loss_is_ce_plus_lambda_times_regulariser():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.0})  # zero noise: deterministic forward
    ctx = sgd_context(model, noise, num_classes=3)
    m = get_method("correctnet", lam=0.01)
    m.prepare(ctx)
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    logs = m.training_step(ctx, x, y)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
        reg = _direct(model[0].weight) + _direct(model[2].weight)
    assert logs["lipschitz"] == pytest.approx(reg, rel=1e-5)
    assert logs["loss"] == pytest.approx(float(ce) + 0.01 * reg, rel=1e-5)
    with torch.no_grad():
        assert float(lipschitz_regulariser({"a": model[0].weight})) == pytest.approx(_direct(model[0].weight), rel=1e-5)


def test_trains_on_digits_and_reduces_the_regulariser():
    d = load_dataset("digits")
    ds = Dataset("digits", d.x_train[:384], d.y_train[:384], d.x_test[:120], d.y_test[:120], 10)
    cfg = TrainConfig(
        method="correctnet",
        method_options={"lam": 1e-2},
        noise={"family": "gaussian", "sigma": 0.2, "convention": "level"},
        epochs=3,
        lr=3e-3,
        progress=False,
        val_noise_draws=2,
    )
    res = train(cfg, dataset=ds, log=lambda _s: None)
    h = res.history
    assert h[-1]["lipschitz"] < h[0]["lipschitz"]
    assert res.test is not None and res.test["test_acc"] > 0.5  # 120 test images, ten classes: chance is 10 %
