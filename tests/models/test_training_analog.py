"""Training any method through the analog crossbar tiles (TrainConfig.analog, `rram train --analog`)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.config import TrainConfig
from models.data import load_dataset
from models.training import train

BASE: dict[str, Any] = dict(
    model="mlp",
    method="noise",
    noise={"family": "gaussian", "sigma": 0.05},
    epochs=2,
    seed=3,
    progress=False,
    val_noise_draws=0,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_the_ideal_tile_trains_exactly_as_the_digital_forward(digits) -> None:
    digital = train(TrainConfig(**BASE), dataset=digits, log=lambda _s: None)
    ideal = train(TrainConfig(**BASE, analog="ideal"), dataset=digits, log=lambda _s: None)
    for k, v in digital.model.state_dict().items():
        assert torch.equal(v, ideal.model.state_dict()[k]), k


def test_a_method_trains_on_the_table1_tile_and_keeps_its_input_ranges(digits, tmp_path) -> None:
    ck = tmp_path / "m.pt"
    cfg = TrainConfig(**BASE, analog="ibm_table1", checkpoint=str(ck))
    res = train(cfg, dataset=digits, log=lambda _s: None, stop_after=1)
    state = res.checkpoint["train_state"]["analog"]
    layers = {n for n, m in res.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert state["preset"] == "ibm_table1" and set(state["input_ranges"]) == layers and layers
    assert all(a > 0 for a in state["input_ranges"].values())
    from models.checkpoint import save_checkpoint

    save_checkpoint(res.checkpoint, ck)
    resumed = train(cfg, dataset=digits, resume=ck, log=lambda _s: None)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.test is not None and resumed.test["test_acc"] > 0.5  # ten classes: chance is 10 %
    assert load_checkpoint(ck)["train_state"]["analog"]["input_ranges"].keys() == state["input_ranges"].keys()
    with pytest.raises(ValueError, match="ibm_hwa trains on its own analog tiles"):
        train(TrainConfig(**{**BASE, "method": "ibm_hwa"}, analog="ibm_table1"), dataset=digits, log=lambda _s: None)
