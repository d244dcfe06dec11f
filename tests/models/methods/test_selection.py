"""Hyperparameter search: the grid search finds a planted optimum, trial runs are reproducible and leave the run alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.config import TrainConfig
from models.methods import TrainContext, get_method
from models.methods.selection import (
    SearchResult,
    best_index,
    grid_search,
    train_trial,
    trial_seed,
    validation_data,
    variant,
)
from models.noise.factory import noise_from_spec

torch.set_num_threads(1)


def _ctx(val_loader=None) -> TrainContext:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(3)]
    return TrainContext(
        model=model,
        noise=noise_from_spec({"family": "gaussian", "sigma": 0.2}),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(7),
        config=TrainConfig(epochs=2, lr=1e-2, seed=3),
        num_classes=3,
        train_loader=batches,
        val_loader=val_loader,
    )


def test_grid_search_finds_a_planted_optimum_and_scores_every_candidate_once_in_order():
    grid = [{"lam": lam, "scale": s} for lam in (0.5, 1.0, 1.5, 3.0) for s in (0.5, 1.0, 2.0)]
    seen = []

    def score(c):
        seen.append(c)
        return -((c["lam"] - 1.5) ** 2) - (c["scale"] - 0.5) ** 2  # planted maximum at lam 1.5, scale 0.5

    r = grid_search(grid, score)
    assert seen == grid
    assert r.best == {"lam": 1.5, "scale": 0.5} and r.best_index == 6 and r.best_score == 0.0
    assert r.scores == tuple(score(c) for c in grid)
    assert r.to_dict()["best"] == 6 and len(r.to_dict()["scores"]) == len(grid)


def test_ties_go_to_the_earlier_candidate_and_nan_is_the_worst():
    assert best_index([0.2, 0.5, 0.5, 0.1]) == 1
    assert best_index([math.nan, 0.1, math.nan]) == 1
    assert grid_search([3, 1, 2], lambda c: math.nan if c == 3 else float(c)).best == 2
    with pytest.raises(ValueError, match="every candidate of the search scored NaN"):
        grid_search([1, 2], lambda c: math.nan)
    with pytest.raises(ValueError, match="the search grid is empty"):
        grid_search([], lambda c: 0.0)


def test_validation_data_joins_the_batches_and_says_when_there_are_none():
    x1, x2 = torch.randn(4, 6), torch.randn(3, 6)
    y1, y2 = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 2])
    x, y = validation_data(_ctx([(x1, y1), (x2, y2)]), "trice")
    assert torch.equal(x, torch.cat([x1, x2])) and torch.equal(y, torch.cat([y1, y2]))
    with pytest.raises(ValueError, match="method 'trice': the search needs a validation split") as info:
        validation_data(_ctx(None), "trice")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="the validation split is empty"):
        validation_data(_ctx([]), "trice")


def test_trials_are_reproducible_and_leave_the_run_untouched():
    ctx = _ctx()
    before = {k: v.clone() for k, v in ctx.raw_model.state_dict().items()}
    rng, noise_rng = torch.get_rng_state(), ctx.generator.get_state()
    seed = trial_seed(ctx)
    a = train_trial(ctx, get_method("noise"), 2, seed)
    b = train_trial(ctx, get_method("noise"), 2, seed)
    c = train_trial(ctx, get_method("noise"), 2, seed + 1)
    # same seed: bit-identical trial networks; another seed: another noise stream, other weights
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in before)
    assert any(not torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in before)
    # the trials trained copies: the run's network, its noise stream and torch's RNG are as they were
    assert all(torch.equal(ctx.raw_model.state_dict()[k], before[k]) for k in before)
    assert any(not torch.equal(a.state_dict()[k], before[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(ctx.generator.get_state(), noise_rng)
    assert ctx.optimizer.state == {}  # the run's optimizer never stepped


def test_variant_copies_the_options_and_checks_the_changes():
    m = get_method("trice", lam=2.0, recentre=True)
    v = variant(m, scale=1.5)
    assert type(v) is type(m) and v is not m
    assert (v.options.lam, v.options.recentre, v.options.scale) == (2.0, True, 1.5)
    assert m.options.scale == 1.0
    with pytest.raises(ValueError, match="option scale must be a number"):
        variant(m, scale="big")


def test_search_result_round_trips_through_its_dict():
    r = SearchResult((0.1, 0.01), (0.5, 0.75), 1)
    d = r.to_dict()
    assert SearchResult(tuple(d["candidates"]), tuple(d["scores"]), d["best"]) == r
