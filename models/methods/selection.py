"""Hyperparameter choice on the validation split: a grid search, and one short trial run per candidate.

A method that chooses its own hyperparameters (TRICE's lambda and training sigma, NeFT's beta) calls
`search_method` from ``prepare``: every candidate trains a copy of the run's freshly initialised
network with a variant of the method, is scored on ``ctx.val_loader`` under the run's noise, and the
best candidate wins. Trials share their initial weights, batches and noise stream (common random
numbers), and run inside a forked torch RNG, so the search does not move the main run's random state.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.methods._util import epoch_batches, loader_length
from models.methods.base import TrainContext, TrainingMethod
from models.montecarlo import MCResult, evaluate_mc
from models.noise.base import WeightNoise
from models.optim import average_gradients, make_optimizer

T = TypeVar("T")
MethodT = TypeVar("MethodT", bound=TrainingMethod[Any])


@dataclass(frozen=True)
class SearchResult(Generic[T]):
    """Every candidate with its score (higher is better) and the index of the chosen one."""

    candidates: tuple[T, ...]
    scores: tuple[float, ...]
    best_index: int

    @property
    def best(self) -> T:
        """The chosen candidate."""
        return self.candidates[self.best_index]

    @property
    def best_score(self) -> float:
        """The chosen candidate's score."""
        return self.scores[self.best_index]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (candidates as given, scores as floats), for checkpoints and logs."""
        return {"candidates": list(self.candidates), "scores": [float(s) for s in self.scores], "best": self.best_index}


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score; NaN counts as the worst, ties go to the earlier candidate."""
    finite = [i for i, s in enumerate(scores) if not math.isnan(s)]
    if not finite:
        raise ValueError("every candidate of the search scored NaN: check the grid and the validation data")
    return max(finite, key=lambda i: (scores[i], -i))


def grid_search(candidates: Iterable[T], score_fn: Callable[[T], float]) -> SearchResult[T]:
    """Score every candidate in order with ``score_fn`` and choose the highest (`best_index`)."""
    cands = tuple(candidates)
    if not cands:
        raise ValueError("the search grid is empty: give at least one candidate value")
    scores = tuple(float(score_fn(c)) for c in cands)
    return SearchResult(cands, scores, best_index(scores))


def validation_data(ctx: TrainContext, method: str) -> tuple[Tensor, Tensor]:
    """All of ``ctx.val_loader`` as one (x, y) pair, or a one-line error naming the method that needs it."""
    if ctx.val_loader is None:
        raise ValueError(f"method {method!r}: the search needs a validation split (ctx.val_loader is None)")
    xs, ys = [], []
    for x, y in epoch_batches(ctx.val_loader, 0):
        xs.append(x)
        ys.append(y)
    if not xs or sum(len(y) for y in ys) == 0:
        raise ValueError(f"method {method!r}: the validation split is empty, so the search has nothing to score")
    return torch.cat(xs), torch.cat(ys)


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def trial_seed(ctx: TrainContext) -> int:
    """Seed of the trials of a search: the same for every candidate, distinct from the main run's noise stream."""
    return ctx.config.seed * 7919 + 104_729 * ctx.rank + 2_718_281


def train_trial(ctx: TrainContext, method: TrainingMethod[Any], epochs: int, seed: int) -> nn.Module:
    """Train a copy of the run's network (as it is now: freshly initialised) with ``method`` for ``epochs``.

    The trial has its own optimizer (the config's, cosine-scheduled over the trial when the run is),
    its own noise generator seeded with ``seed`` and torch's RNG seeded with ``seed`` inside a fork (so
    heads a method builds start alike for every candidate); gradient accumulation is not applied.
    Returns ``method.export_model`` of the trained copy.
    """
    if epochs < 1:
        raise ValueError(f"a trial needs at least one epoch, got {epochs}")
    with torch.random.fork_rng(devices=_rng_devices(ctx.device)):
        torch.manual_seed(seed)
        model = copy.deepcopy(ctx.raw_model)
        opt = make_optimizer(ctx.config, model.parameters())
        gen = torch.Generator(device=ctx.device)
        gen.manual_seed(seed)
        scaler = torch.amp.GradScaler("cuda") if ctx.scaler is not None else None
        child = dataclasses.replace(
            ctx, model=model, optimizer=opt, generator=gen, scaler=scaler, step=0, epoch=0, resuming=False, extra={}
        )
        method.prepare(child)
        params = [p for grp in opt.param_groups for p in grp["params"]]
        sched = None
        if ctx.config.scheduler == "cosine":
            total = max(1, epochs * loader_length(ctx.train_loader))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        model.train()
        for ep in range(epochs):
            child.epoch = ep
            method.on_epoch_start(child)
            for x, y in epoch_batches(ctx.train_loader, ep):
                opt.zero_grad(set_to_none=True)
                with child.autocast():
                    method.training_step(child, x, y)
                average_gradients(params, ctx.world_size)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if sched is not None:
                    sched.step()
                child.step += 1
        return method.export_model(model)


def evaluate_on_validation(
    model: nn.Module, ctx: TrainContext, noise: WeightNoise, draws: int, seed: int, method: str, kpp: float = 1.0
) -> MCResult:
    """Monte Carlo accuracy of ``model`` on the validation split under ``noise`` (draws seeded from ``seed``)."""
    x, y = validation_data(ctx, method)
    return evaluate_mc(model, x, y, noise, draws, seed=seed, kpp=(float(kpp),), device=ctx.device, clean=False)


def _agree(result: SearchResult[T], ctx: TrainContext) -> SearchResult[T]:
    """Rank 0's scores on every rank (the ranks' trials match; this rules out floating-point disagreement)."""
    if ctx.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return result
    scores = torch.tensor(result.scores, dtype=torch.float64, device=ctx.device)
    dist.broadcast(scores, src=0)
    s = tuple(float(v) for v in scores.cpu())
    return SearchResult(result.candidates, s, best_index(s))


def variant(method: MethodT, **changes: Any) -> MethodT:
    """A fresh instance of ``method``'s class with its options and ``changes`` (parsed and checked again)."""
    raw = {f.name: getattr(method.options, f.name) for f in dataclasses.fields(method.options)}
    return type(method)(**{**raw, **changes})


def search_method(
    ctx: TrainContext,
    candidates: Iterable[T],
    make_method: Callable[[T], TrainingMethod[Any]],
    score: Callable[[nn.Module], float],
    epochs: int,
) -> SearchResult[T]:
    """Grid search over ``candidates``: each trains `train_trial` with ``make_method(candidate)`` and is scored."""
    seed = trial_seed(ctx)
    result = grid_search(candidates, lambda c: score(train_trial(ctx, make_method(c), epochs, seed)))
    return _agree(result, ctx)
