"""SWIM sensitivities: the Gauss-Newton pass against autograd's exact Hessian, and budgeted selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from models.swim.selection import rank, weight_scores
from models.swim.sensitivity import compute_sensitivity


def _exact_hessian_diag(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters()}
    w0 = params[name]

    def loss(w: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, {**params, name: w}, (x,)), y)

    h = torch.autograd.functional.hessian(loss, w0)
    return h.reshape(w0.numel(), w0.numel()).diagonal().reshape(w0.shape)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_gauss_newton_diagonal_equals_exact_hessian_diagonal_for_relu_mlp(chunk: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(40, 6), torch.randint(0, 4, (40,))
    # two batches: the pass must accumulate over the data
    sens = compute_sensitivity(model, [(x[:25], y[:25]), (x[25:], y[25:])], chunk=chunk)
    assert sens.samples == 40
    for name in ("0.weight", "2.weight"):
        exact = _exact_hessian_diag(model, name, x, y)
        torch.testing.assert_close(sens.hess_diag[name], exact, rtol=1e-4, atol=1e-7)
        assert (sens.hess_diag[name] >= 0).all()


def test_gradient_term_is_the_mean_loss_gradient() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.randn(10, 1, 6, 6), torch.randint(0, 3, (10,))
    sens = compute_sensitivity(model, [(x, y)])
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [model[0].weight, model[3].weight])
    torch.testing.assert_close(sens.grad["0.weight"], grads[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(sens.grad["3.weight"], grads[1], rtol=1e-4, atol=1e-7)
    # conv: the exact Hessian diagonal still matches (conv is linear in each weight, ReLU piecewise linear)
    torch.testing.assert_close(
        sens.hess_diag["0.weight"], _exact_hessian_diag(model, "0.weight", x, y), rtol=1e-3, atol=1e-7
    )


def test_planted_sensitive_weight_ranks_first_for_swim_not_for_magnitude() -> None:
    torch.manual_seed(2)
    model = nn.Linear(5, 3)
    with torch.no_grad():
        model.weight.uniform_(0.5, 1.0)
        model.weight[1, 0] = 0.01  # tiny weight on a huge input: small |w|, large Hessian
    x = torch.randn(200, 5)
    x[:, 0] *= 30.0
    y = torch.randint(0, 3, (200,))
    sens = compute_sensitivity(model, [(x, y)])
    w = {"weight": model.weight}
    sigma = {"weight": torch.full_like(model.weight, 0.05)}
    sigma_v = {"weight": torch.full_like(model.weight, 0.01)}
    swim = weight_scores("swim", w, sens, sigma, sigma_v)
    top = rank(swim).mask(1 / 15)["weight"]
    assert top.sum() == 1 and bool(top[:, 0].any())  # the first verified weight sits on the huge input
    mag_top = rank(weight_scores("magnitude", w, None, sigma, sigma_v)).mask(1 / 15)["weight"]
    assert not bool(mag_top[1, 0])


def test_ranking_is_global_across_layers_and_respects_budget_and_granularity() -> None:
    scores = {"a": torch.tensor([[5.0, 1.0], [0.0, 3.0]]), "b": torch.tensor([[4.0, 2.0, 0.5]])}
    m = rank(scores).mask(3 / 7)
    assert m["a"].tolist() == [[True, False], [False, True]] and m["b"].tolist() == [[True, False, False]]
    assert sum(int(v.sum()) for v in rank(scores).mask(1.0).values()) == 7
    assert sum(int(v.sum()) for v in rank(scores).mask(0.0).values()) == 0
    col = rank(scores, "column").mask(2 / 7)  # whole output channels
    assert col["a"].tolist() == [[True, True], [False, False]]
    row = rank(scores, "row").mask(1 / 7)  # whole input lines
    assert row["b"].tolist() == [[True, False, False]] and not row["a"].any()
    with pytest.raises(ValueError, match="granularity"):
        rank(scores, "tile")
    with pytest.raises(ValueError, match="fraction"):
        rank(scores).mask(1.5)


def test_random_and_gradient_baselines() -> None:
    w = {"w": torch.zeros(4, 4)}
    s = {"w": torch.ones(4, 4)}
    r1 = weight_scores("random", w, None, s, s, seed=3)["w"]
    r2 = weight_scores("random", w, None, s, s, seed=3)["w"]
    assert torch.equal(r1, r2) and r1.std() > 0
    with pytest.raises(ValueError, match="unknown selection method"):
        weight_scores("oracle", w, None, s, s)
