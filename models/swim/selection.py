"""Choosing which weights to write-verify under a budget: SWIM and the magnitude/random/gradient baselines.

Scores are per weight; a weight is one differential device pair, so verifying it verifies both of
its devices. Ranking is global across layers, at the granularity the board programs: single weights,
crossbar rows (one input line of a layer) or crossbar columns (one output channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.swim.sensitivity import Sensitivity

METHODS = ("swim", "magnitude", "random", "gradient")
GRANULARITIES = ("weight", "row", "column")


def weight_scores(
    method: str,
    weights: dict[str, Tensor],
    sens: Sensitivity | None,
    sigma_open: dict[str, Tensor],
    sigma_verified: dict[str, Tensor],
    seed: int = 0,
) -> dict[str, Tensor]:
    """Priority of each weight for verification (higher first)."""
    if method == "swim":
        if sens is None:
            raise ValueError("SWIM scores need sensitivities")
        before = sens.loss_impact(sigma_open)
        after = sens.loss_impact(sigma_verified)
        return {n: before[n] - after[n] for n in weights}
    if method == "magnitude":
        return {n: w.detach().abs() for n, w in weights.items()}
    if method == "gradient":
        if sens is None:
            raise ValueError("gradient scores need sensitivities")
        return {n: sens.grad[n].abs() * sigma_open[n] for n in weights}
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return {n: torch.rand(w.shape, generator=gen).to(w.device) for n, w in weights.items()}
    raise ValueError(f"unknown selection method {method!r} (one of {', '.join(METHODS)})")


def _groups(score: Tensor, granularity: str) -> tuple[Tensor, Tensor]:
    """(group id of every weight, mean score of every group) for a weight tensor of shape (out, in, ...)."""
    mat = score.reshape(score.shape[0], -1)
    if granularity == "weight":
        ids = torch.arange(mat.numel(), device=score.device).reshape(mat.shape)
    elif granularity == "column":  # one output channel = one crossbar column
        ids = torch.arange(mat.shape[0], device=score.device)[:, None].expand(mat.shape)
    elif granularity == "row":  # one input line = one crossbar row
        ids = torch.arange(mat.shape[1], device=score.device)[None, :].expand(mat.shape)
    else:
        raise ValueError(f"unknown granularity {granularity!r} (one of {', '.join(GRANULARITIES)})")
    n_groups = int(ids.max()) + 1
    sums = torch.zeros(n_groups, device=score.device, dtype=score.dtype).index_add_(0, ids.reshape(-1), mat.reshape(-1))
    counts = torch.bincount(ids.reshape(-1), minlength=n_groups).to(score.dtype)
    return ids.reshape(score.shape), sums / counts


@dataclass
class Ranking:
    """All groups of all layers in verification order."""

    names: list[str]
    group_ids: dict[str, Tensor]  # per weight: its group within its layer
    order_layer: Tensor  # (G,) layer index of each group, in priority order
    order_group: Tensor  # (G,) group index within the layer
    sizes: Tensor  # (G,) weights per group
    total: int

    def mask(self, fraction: float) -> dict[str, Tensor]:
        """Verify the top groups until `fraction` of all weights are covered."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"verify fraction must be in [0, 1], got {fraction}")
        budget = fraction * self.total
        cum = torch.cumsum(self.sizes, 0)
        take = int(torch.searchsorted(cum, torch.tensor(budget, dtype=cum.dtype), right=True))
        if take < len(cum) and budget > 0 and (take == 0 or cum[take - 1] < budget):
            # include the group that crosses the budget only if that brings us closer to it
            below = budget - (cum[take - 1] if take else 0)
            if cum[take] - budget < below:
                take += 1
        out = {}
        for li, name in enumerate(self.names):
            chosen = self.order_group[:take][self.order_layer[:take] == li]
            ids = self.group_ids[name]
            sel = torch.zeros(int(ids.max()) + 1, dtype=torch.bool, device=ids.device)
            sel[chosen.to(ids.device)] = True
            out[name] = sel[ids]
        return out


def rank(scores: dict[str, Tensor], granularity: str = "weight") -> Ranking:
    """Global ranking of verification groups across layers, highest score per weight first."""
    names = list(scores)
    layer_of, group_of, score_of, size_of, ids_of = [], [], [], [], {}
    for li, n in enumerate(names):
        ids, mean = _groups(scores[n].detach().float().cpu(), granularity)
        ids_of[n] = ids
        counts = torch.bincount(ids.reshape(-1), minlength=len(mean))
        layer_of.append(torch.full((len(mean),), li))
        group_of.append(torch.arange(len(mean)))
        score_of.append(mean)
        size_of.append(counts)
    score = torch.cat(score_of)
    order = torch.argsort(score, descending=True, stable=True)
    return Ranking(
        names,
        ids_of,
        torch.cat(layer_of)[order],
        torch.cat(group_of)[order],
        torch.cat(size_of)[order].double(),
        int(sum(s.numel() for s in scores.values())),
    )
