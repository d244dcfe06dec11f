"""Training loop: noise injection beats vanilla under noise, resume == uninterrupted, registry, checkpoints."""

import dataclasses

import pytest
import torch

from models.checkpoint import load_checkpoint, load_model
from models.config import TrainConfig
from models.data import load_dataset
from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions, option
from models.methods.registry import METHODS, available_methods, get_method
from models.montecarlo import evaluate_mc
from models.noise.factory import noise_from_spec
from models.training import train

torch.set_num_threads(1)
QUIET = dict(progress=False, val_noise_draws=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_noise_injection_beats_vanilla_under_noise(digits):
    # NeFT Gaussian device noise sigma_d = 1.5 level units on 8-bit / 2-bit-device weights (std ~0.39 max|W|)
    spec = {"family": "gaussian", "sigma": 1.5}
    noise = noise_from_spec(spec)
    res = {}
    for method in ("vanilla", "noise"):
        cfg = TrainConfig(model="mlp", method=method, noise=spec, epochs=12, lr=3e-3, seed=0, **QUIET)
        model = train(cfg, dataset=digits, log=lambda s: None).model
        res[method] = evaluate_mc(model, digits.x_test, digits.y_test, noise, 200, seed=1)
    van, inj = res["vanilla"], res["noise"]
    assert van.clean_accuracy > 0.95
    assert van.clean_accuracy - van.mean >= 0.10  # vanilla loses >= 10 points under this noise
    assert inj.mean > van.mean + 0.03  # noise injection recovers part of it
    assert inj.ci95[0] > van.ci95[1]


def test_deterministic_and_resume_equals_uninterrupted(digits, tmp_path):
    base = dict(
        model="cnn",
        method="noise",
        noise={"family": "additive", "eta": 0.1},
        lr=3e-3,
        seed=4,
        batch_size=128,
        progress=False,
        val_noise_draws=2,
    )
    full = train(TrainConfig(epochs=2, **base), dataset=digits, log=lambda s: None)
    again = train(TrainConfig(epochs=2, **base), dataset=digits, log=lambda s: None)
    ck = tmp_path / "m.pt"
    train(TrainConfig(epochs=2, checkpoint=str(ck), **base), dataset=digits, log=lambda s: None, stop_after=1)
    assert load_checkpoint(ck)["train_state"]["epoch"] == 1
    resumed = train(TrainConfig(epochs=2, checkpoint=str(ck), **base), dataset=digits, resume=ck, log=lambda s: None)
    sd_full = full.model.state_dict()
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, sd_full[k])
    for k, v in resumed.model.state_dict().items():
        assert torch.allclose(v, sd_full[k], atol=1e-6), k
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[-1]["val_noisy_acc"] == pytest.approx(full.history[-1]["val_noisy_acc"], abs=1e-6)
    with pytest.raises(ValueError, match="different lr"):
        train(TrainConfig(epochs=3, **{**base, "lr": 1e-2}), dataset=digits, resume=ck, log=lambda s: None)


def test_checkpoint_is_self_describing(digits, tmp_path):
    ck = tmp_path / "m.pt"
    cfg = TrainConfig(
        model="mlp",
        model_kwargs={"hidden": [32]},
        method="vanilla",
        epochs=1,
        checkpoint=str(ck),
        noise={"family": "lognormal", "sigma": 0.2},
        **QUIET,
    )
    out = train(cfg, dataset=digits, log=lambda s: None)
    rec = load_checkpoint(ck)
    assert rec["arch"] == {
        "name": "mlp",
        "kwargs": {"hidden": [32]},
        "in_channels": 1,
        "image_size": 8,
        "num_classes": 10,
    }
    assert rec["data"]["name"] == "digits" and rec["noise"] == {"family": "lognormal", "sigma": 0.2}
    assert rec["config"]["method"] == "vanilla" and rec["train_state"]["epoch"] == 1
    model, _ = load_model(ck)
    x = digits.x_test[:16]
    assert torch.allclose(model(x), out.model.eval()(x))
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable model file"):
        load_checkpoint(tmp_path / "bad.pt")


def test_registry_discovers_and_plugins_run_in_the_loop(digits):
    names = available_methods()
    assert {"vanilla", "noise"} <= set(names)
    with pytest.raises(ValueError, match="unknown training method"):
        get_method("nope")
    with pytest.raises(ValueError, match="unknown option"):
        get_method("noise", scal=2)

    seen = {}

    @dataclasses.dataclass(frozen=True)
    class TwoBackwardOptions(MethodOptions):
        weight: float = option(0.5, "weight of the second pass's loss")

    @METHODS.register("_test_two_backward")
    class TwoBackward(TrainingMethod[TwoBackwardOptions]):
        """Test plugin: two noisy forward/backward passes per step and an extra head added to the optimizer."""

        name = "_test_two_backward"
        Options = TwoBackwardOptions

        def prepare(self, ctx: TrainContext) -> None:
            self.head = torch.nn.Linear(10, 10).to(ctx.device)
            ctx.add_parameters(self.head.parameters())
            seen["groups"] = len(ctx.optimizer.param_groups)

        def training_step(self, ctx, x, y):
            l1 = torch.nn.functional.cross_entropy(ctx.noisy_forward(x), y)
            ctx.backward(l1)
            l2 = torch.nn.functional.cross_entropy(self.head(ctx.noisy_forward(x)), y) * self.options.weight
            ctx.backward(l2)
            seen["steps"] = ctx.step + 1
            return {"loss": float(l1.detach() + l2.detach()), "aux": float(l2.detach())}

    res = train(
        TrainConfig(
            model="mlp",
            method="_test_two_backward",
            noise={"family": "additive", "eta": 0.05},
            epochs=1,
            batch_size=256,
            **QUIET,
        ),
        dataset=digits,
        log=lambda s: None,
    )
    assert seen["groups"] == 2 and seen["steps"] == 6  # ceil(1437 / 256) = 6 steps
    assert "aux" in res.history[0] and res.history[0]["val_acc"] > 0.3


def test_noise_method_needs_noise(digits):
    with pytest.raises(ValueError, match="needs a noise model"):
        train(TrainConfig(model="mlp", method="noise", epochs=1, **QUIET), dataset=digits, log=lambda s: None)
