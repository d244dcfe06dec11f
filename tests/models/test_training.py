"""Training loop: noise injection beats vanilla under noise, resume == uninterrupted, registry, checkpoints."""

import dataclasses
from typing import Any

import pytest
import torch

from models.checkpoint import load_checkpoint, load_model
from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions, option
from models.methods.registry import METHODS, available_methods, get_method
from models.montecarlo import evaluate_mc
from models.noise.factory import noise_from_spec
from models.training import train

torch.set_num_threads(1)
QUIET: dict[str, Any] = dict(progress=False, val_noise_draws=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_noise_injection_beats_vanilla_under_noise(digits):
    # NeFT Gaussian device noise sigma_d = 1.5 level steps on 8-bit / 2-bit-device weights (std ~0.39 max|W|);
    # "level" keeps that reading under the full-range default convention (where it would be sigma_d = 0.5)
    spec = {"family": "gaussian", "sigma": 1.5, "convention": "level"}
    noise = noise_from_spec(spec)
    res = {}
    for method in ("vanilla", "noise"):
        cfg = TrainConfig(model="mlp", method=method, noise=spec, epochs=12, lr=3e-3, seed=0, **QUIET)
        model = train(cfg, dataset=digits, log=lambda s: None).model
        res[method] = evaluate_mc(model, digits.x_test, digits.y_test, noise, 200, seed=1)
    van, inj = res["vanilla"], res["noise"]
    assert van.clean_accuracy is not None and van.clean_accuracy > 0.95
    assert van.clean_accuracy - van.mean >= 0.10  # vanilla loses >= 10 points under this noise
    assert inj.mean > van.mean + 0.03  # noise injection recovers part of it
    assert inj.ci95[0] > van.ci95[1]


def test_deterministic_and_resume_equals_uninterrupted(digits, tmp_path):
    base: dict[str, Any] = dict(
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
    assert seen["groups"] == 2 and seen["steps"] == 6  # 1437 - 144 validation = 1293 samples: ceil(1293 / 256) = 6
    assert "aux" in res.history[0] and res.history[0]["val_acc"] > 0.3


def test_noise_method_needs_noise(digits):
    with pytest.raises(ValueError, match="needs a noise model"):
        train(TrainConfig(model="mlp", method="noise", epochs=1, **QUIET), dataset=digits, log=lambda s: None)


# ------------------------------------------------------------------------------- validation split, test once


def test_training_validates_on_the_validation_split_and_never_reads_the_test_split(digits):
    seen: dict[str, int] = {}

    @METHODS.register("_test_sees_loaders")
    class SeesLoaders(TrainingMethod[MethodOptions]):
        """Test plugin: vanilla training that records the sizes of the loaders the loop hands it."""

        name = "_test_sees_loaders"
        Options = MethodOptions

        def prepare(self, ctx: TrainContext) -> None:
            assert ctx.train_loader is not None and ctx.val_loader is not None
            seen["train"] = len(ctx.train_loader.x)  # type: ignore[attr-defined]
            seen["val"] = sum(len(yv) for _, yv in ctx.val_loader)

        def training_step(self, ctx, x, y):
            loss = torch.nn.functional.cross_entropy(ctx.model(x), y)
            ctx.backward(loss)
            return {"loss": float(loss.detach())}

    spec = {"family": "additive", "eta": 0.05}
    cfg = TrainConfig(model="mlp", method="_test_sees_loaders", noise=spec, epochs=2, lr=3e-3, seed=1)
    cfg = dataclasses.replace(cfg, progress=False, val_noise_draws=3)
    res = train(cfg, dataset=digits, log=lambda s: None)
    assert seen == {"train": 1293, "val": 144}  # round(0.1 * 1437) held out of the training split
    # a dataset whose test split is garbage (NaN images, shifted labels) trains to the same weights and history
    # (any read of it during training would turn an accuracy or a loss into NaN or another number); its test
    # evaluation, the one read after training, is switched off here: NaN images have no accuracy to fit
    junk = Dataset(
        digits.name,
        digits.x_train,
        digits.y_train,
        torch.full_like(digits.x_test, float("nan")),
        (digits.y_test + 1) % 10,
        digits.num_classes,
    )
    res_junk = train(cfg, dataset=junk, log=lambda s: None, evaluate_test=False)
    drop_time = lambda h: [{k: v for k, v in e.items() if k != "time_s"} for e in h]
    assert drop_time(res_junk.history) == drop_time(res.history)
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, res_junk.model.state_dict()[k])
    # the history's val_acc is the validation split's clean accuracy, recomputed here independently
    split = digits.with_validation(0.1, seed=1)
    assert split.x_val is not None and split.y_val is not None
    with torch.no_grad():
        pred = res.model.eval()(split.x_val).argmax(1)
    assert res.history[-1]["val_acc"] == int((pred == split.y_val).sum()) / len(split.y_val)
    # the test split is read once, after training: the clean test accuracy is the model's on x_test
    assert res.test is not None and set(res.test) == {"test_acc", "test_noisy_acc", "test_noisy_std"}
    with torch.no_grad():
        test_pred = res.model(digits.x_test).argmax(1)
    assert res.test["test_acc"] == int((test_pred == digits.y_test).sum()) / len(digits.y_test)
    assert res_junk.test is None


def test_val_fraction_zero_keeps_the_whole_training_split_and_test_is_skipped_when_asked(digits):
    cfg = TrainConfig(model="mlp", epochs=1, val_fraction=0.0, **QUIET)
    res = train(cfg, dataset=digits, log=lambda s: None)
    assert "val_acc" not in res.history[0] and res.test is not None and res.test["test_acc"] > 0.3
    assert train(cfg, dataset=digits, log=lambda s: None, evaluate_test=False).test is None
    stopped = train(dataclasses.replace(cfg, epochs=2), dataset=digits, log=lambda s: None, stop_after=1)
    assert stopped.test is None  # an unfinished run does not report a test accuracy
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        train(dataclasses.replace(cfg, val_fraction=1.0), dataset=digits, log=lambda s: None)


def test_a_config_written_before_val_fraction_loads_and_resumes_as_it_was_trained(digits, tmp_path):
    ck = tmp_path / "old.pt"
    old = TrainConfig(
        model="mlp", model_kwargs={"hidden": [16]}, epochs=2, val_fraction=0.0, checkpoint=str(ck), **QUIET
    )
    train(old, dataset=digits, log=lambda s: None, stop_after=1)
    rec = load_checkpoint(ck)
    del rec["config"]["val_fraction"]  # as a model file from before the field existed
    torch.save(rec, ck)
    back = TrainConfig.from_dict(load_checkpoint(ck)["config"])
    assert back.val_fraction == 0.0 and dataclasses.replace(back, val_fraction=0.0) == back
    assert TrainConfig.from_dict(TrainConfig().to_dict()).val_fraction == 0.1  # a new config keeps its value
    done = train(old, dataset=digits, resume=ck, log=lambda s: None)
    assert [h["epoch"] for h in done.history] == [1, 2]
    with pytest.raises(ValueError, match="different val_fraction"):
        train(dataclasses.replace(old, val_fraction=0.1), dataset=digits, resume=ck, log=lambda s: None)


def test_convolutional_networks_refuse_one_dimensional_signals():
    x = torch.randn(20, 40, 1, 1)  # MNIST-1D's layout: 40 samples as channels of a 1x1 image
    y = torch.arange(20) % 10
    signals = Dataset("mnist1d", x, y, x[:4], y[:4], 10)
    with pytest.raises(ValueError, match="1-D signals of 40 values.*train an mlp"):
        train(TrainConfig(model="cnn", epochs=1, **QUIET), dataset=signals, log=lambda s: None)
    res = train(TrainConfig(model="mlp", epochs=1, **QUIET), dataset=signals, log=lambda s: None)
    assert res.model(x[:2]).shape == (2, 10)


def test_a_run_resumes_with_the_noise_spec_it_was_started_with(digits, tmp_path):
    """The stored spec carries its sigma_d convention written out; the same spec given again still resumes."""
    base: dict[str, Any] = dict(
        model="mlp",
        method="noise",
        noise={"family": "gaussian", "sigma": 0.1},
        seed=1,
        progress=False,
        val_noise_draws=0,
    )
    ck = tmp_path / "m.pt"
    train(TrainConfig(epochs=2, checkpoint=str(ck), **base), dataset=digits, log=lambda s: None, stop_after=1)
    assert load_checkpoint(ck)["config"]["noise"]["convention"] == "range"
    resumed = train(TrainConfig(epochs=2, checkpoint=str(ck), **base), dataset=digits, resume=ck, log=lambda s: None)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    other = {**base, "noise": {"family": "gaussian", "sigma": 0.1, "convention": "level"}}
    with pytest.raises(ValueError, match="different noise"):
        train(TrainConfig(epochs=2, **other), dataset=digits, resume=ck, log=lambda s: None)
