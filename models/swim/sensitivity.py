"""Second-order loss sensitivity of every Conv/Linear weight, for selective write-verify (SWIM).

The expected loss increase from a programming error d with mean mu and std sigma on weight i is, by a
second-order Taylor expansion, g_i mu_i + 1/2 H_ii (sigma_i^2 + mu_i^2). The Hessian diagonal is
taken as the Gauss-Newton diagonal of the cross-entropy loss, accumulated over the data in one
vectorised backward pass per batch: with softmax probabilities p, the output Hessian factors as
diag(p) - p p^T = A A^T with A = diag(sqrt p) - p sqrt(p)^T, so the per-sample diagonal is
sum_c (J^T a_c)^2, where each J^T a_c is a vector-Jacobian product (torch.func.vjp, vmapped over
the C columns and the samples). For ReLU networks the diagonal of the exact Hessian equals this
Gauss-Newton diagonal almost everywhere (the network is piecewise linear in each single weight).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from models.noise.apply import noisy_weight_names


@dataclass
class Sensitivity:
    """Per-weight loss gradient and Gauss-Newton Hessian diagonal (means over the samples seen)."""

    grad: dict[str, Tensor]
    hess_diag: dict[str, Tensor]
    samples: int

    def loss_impact(self, sigma: dict[str, Tensor], mu: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Expected |loss change| of an error N(mu, sigma^2) on each weight, to second order.

        |g mu| + |g| sigma sqrt(2/pi) + 1/2 H (sigma^2 + mu^2): the first-order term enters with its
        expected magnitude (a single programmed chip does not average it out), the second with its mean.
        """
        out = {}
        for n, g in self.grad.items():
            m = torch.zeros_like(g) if mu is None else mu[n]
            s = sigma[n]
            out[n] = (g * m).abs() + g.abs() * s * (2 / torch.pi) ** 0.5 + 0.5 * self.hess_diag[n] * (s**2 + m**2)
        return out


def _per_sample_ggn(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """Gauss-Newton diagonal of one sample's cross-entropy, summed over output classes."""

    def logits_of(p: dict[str, Tensor]) -> Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    # torch types vjp's result as a 2- or 3-tuple union instead of overloading on has_aux (False here: 2)
    logits, pullback = vjp(logits_of, params)  # type: ignore[misc]
    prob = torch.softmax(logits.detach().float(), dim=-1).to(logits.dtype)
    root = prob.sqrt()
    a = torch.diag(root) - torch.outer(prob, root)  # columns a_c: H_out = A A^T
    (jt_a,) = vmap(pullback)(a.T.contiguous())  # {name: (C, *shape)}
    return {n: (g**2).sum(0) for n, g in jt_a.items()}


def compute_sensitivity(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device | str | None = None,
    chunk: int = 32,
    max_samples: int | None = None,
) -> Sensitivity:
    """Mean loss gradient and Gauss-Newton Hessian diagonal of the Conv/Linear weights over `batches`."""
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    names = noisy_weight_names(model)
    all_params = {n: p.detach() for n, p in model.named_parameters()}
    weights = {n: all_params[n] for n in names}
    others = {n: p for n, p in all_params.items() if n not in weights}
    grad = {n: torch.zeros_like(w) for n, w in weights.items()}
    hess = {n: torch.zeros_like(w) for n, w in weights.items()}
    seen = 0

    def ggn_one(x: Tensor) -> dict[str, Tensor]:
        return _per_sample_ggn(model, {**weights, **others}, x)

    def grads_of(w: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
        def loss(wd: dict[str, Tensor]) -> Tensor:
            out = functional_call(model, {**wd, **others}, (x,))
            return nn.functional.cross_entropy(out, y, reduction="sum")

        return torch.func.grad(loss)(w)

    try:
        for x, y in batches:
            x, y = x.to(dev), y.to(dev)
            if max_samples is not None:
                x, y = x[: max_samples - seen], y[: max_samples - seen]
            if not len(x):
                break
            g = grads_of(weights, x, y)
            for n in grad:
                grad[n] += g[n]
            for i in range(0, len(x), chunk):
                per = vmap(ggn_one)(x[i : i + chunk])
                for n in hess:
                    hess[n] += per[n].sum(0)
            seen += len(x)
            if max_samples is not None and seen >= max_samples:
                break
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("no data to compute sensitivities on")
    return Sensitivity({n: v / seen for n, v in grad.items()}, {n: v / seen for n, v in hess.items()}, seen)
