"""Noise on some layers only (DAT's last-layer setting) and the step LR schedule DAT trains with."""

from __future__ import annotations

import pytest
import torch

from models.noise.factory import noise_from_spec, pin_conventions
from models.noise.subset import LayerSubsetNoise


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.weight": torch.randn(2, 4, generator=g)}


def test_only_the_chosen_layers_get_the_base_noise() -> None:
    spec = {"family": "layers", "layers": ["last"], "base": {"family": "additive", "eta": 0.1, "per_channel": False}}
    noise = noise_from_spec(spec)
    assert isinstance(noise, LayerSubsetNoise) and noise.describe() == spec
    w = _weights()
    std = noise.noise_std(w)
    base = noise_from_spec(spec["base"]).noise_std({"b.weight": w["b.weight"]})  # type: ignore[union-attr]
    assert torch.equal(std["a.weight"], torch.zeros(4, 3)) and torch.equal(std["b.weight"], base["b.weight"])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    drawn = noise.draw_sampler(w)(gens)
    assert torch.equal(drawn["a.weight"], w["a.weight"].expand(3, 4, 3))  # the other layer is exactly clean
    assert drawn["b.weight"].shape == (3, 2, 4) and not torch.equal(drawn["b.weight"][0], w["b.weight"])
    # the chosen layer's draws are the base family's own, draw for draw (same generators)
    own = noise_from_spec(spec["base"]).draw_sampler({"b.weight": w["b.weight"]})(  # type: ignore[union-attr]
        [torch.Generator().manual_seed(i) for i in range(3)]
    )
    assert torch.equal(drawn["b.weight"], own["b.weight"])
    assert noise_from_spec({**spec, "layers": "a.weight"}).chosen(w) == ["a.weight"]  # type: ignore[union-attr]


def test_bad_layer_specs_are_one_line_errors() -> None:
    w = _weights()
    with pytest.raises(ValueError, match="'c.weight' is not a noisy weight of this model"):
        noise_from_spec(
            {"family": "layers", "layers": ["c.weight"], "base": {"family": "additive", "eta": 0.1}}
        ).chosen(w)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="needs 'base'"):
        noise_from_spec({"family": "layers", "layers": ["last"]})
    pinned = pin_conventions({"family": "layers", "base": {"family": "gaussian", "sigma": 0.1}})
    assert pinned["base"]["convention"] == "range"


def test_step_schedule_multiplies_the_lr_every_few_epochs() -> None:
    from models.config import TrainConfig
    from models.training import _make_scheduler, parse_step_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _make_scheduler(TrainConfig(scheduler="step:2:0.5"), opt, total_steps=30, steps_per_epoch=3)
    lrs = []
    for _ in range(12):  # 4 epochs of 3 steps
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0] * 6 + [0.5] * 6
    for bad in ("step:0:0.5", "step:2", "step:x:0.5", "step:2:1.5"):
        with pytest.raises(ValueError, match="step:"):
            parse_step_schedule(bad)
