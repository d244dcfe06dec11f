"""Typed method options: every method documents its options, the defaults are the old ones, `--opt` parses in one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from models.config import TrainConfig
from models.methods import METHODS, MethodOptions, TrainContext, get_method
from models.methods.dat import parse_rank
from models.methods.mtrd import parse_clean_teacher
from models.methods.options import describe_options, format_value, parse_options, to_bool, to_int
from models.noise.factory import noise_from_spec

# The `defaults` dicts of every method before typed options (commit 0de4662), values as they were written there.
# The selection options of the searches added in issue 17 (off by default: a run trains as before unless asked).
SEARCH_BETA = {"search": False, "beta_grid": (0.1, 0.01, 0.001, 0.0001), "search_epochs": None, "search_draws": 100}
# Every method's defaults, field by field. Additions are appended; a changed default carries its reason.
OLD_DEFAULTS: dict[str, dict] = {
    "vanilla": {},
    "noise": {"scale": 1.0},
    "neft_ovf": {
        "n_feedback": 3,
        "delta_sigma": 0.05,
        "beta": 0.1,
        "relative_delta": 0.25,
        "sigma": None,
        "a_b": None,
        "a_f": None,
        **SEARCH_BETA,
    },
    "neft_irs": {
        "beta": 1e-3,
        "blocks": None,
        "hidden": 512,
        "noisy_heads": True,
        "a_b": None,
        "a_f": None,
        **SEARCH_BETA,
        "pooling": "equal",  # issue 17: equal-shape snapshots (was global pooling, still "global")
        "snapshot_features": 2304,
    },
    "dat": {
        "rank": 10,
        "scope": "layer",
        "alpha": 10.0,
        "perturbations": 1,
        "refresh_every": "epoch",  # issue 18: the basis is rebuilt once per epoch (was every step, 1)
        "step": "projection",
        "keep_variance": True,  # issue 17: DAT-Fast keeps the full variance (the paper's top-k kept k/n of it)
        "radius": 1.0,
        "ascent": "clean",  # Algorithm 1's clean gradient (issue 18: "previous" reuses the last step's, one pass)
        "layers": "all",  # every layer perturbed (issue 18: "last" is the paper's one-layer setting, one forward)
    },
    "trice": {
        "lam": 1.0,
        "recentre": False,
        "scale": 1.0,
        "search": False,
        "lam_grid": (0.5, 1.0, 1.5, 3.0),
        "scale_grid": (0.5, 1.0, 1.5, 2.0),
        "search_epochs": None,
        "search_draws": 200,
        "kpp": 1.0,
    },
    "mtrd": {
        "teacher_levels": "0.5,1.0,1.5",
        "clean_teacher": True,
        "teachers": None,
        "teacher_epochs": None,
        "teacher_lr": None,
        "temperature": 1.0,
        "kd_weight": 1.0,
        "teacher_noise": False,
        "eps": 1e-6,
    },
    "correctnet": {"lam": 1e-4, "scale": 1.0},
    "ibm_hwa": {
        "noise_scale": 1.0,  # issue 17: relative to the deployment noise (was 3x, from scratch: it collapsed)
        "ramp_batches": None,
        "remap_every": None,
        "drop_connect": 0.001,
        "clip": True,
        "learn_out_scales": True,
        "distill": False,
        "distill_weight": 1.0,
        "temperature": 1.0,
        "teacher": None,
        "pretrain_epochs": None,  # issue 17: FP pre-training first (half the run's epochs), as the supplement
        "analog": "ibm_table1",
        "weight_decay": 0.001,
        "momentum": 0.9,
        "lr_steps": (0.5,),
        "lr_decay": 0.1,
        "grad_clip": None,
    },
}
# The old defaults after the conversion each method applied to them in prepare() (comma lists -> tuples, None -> ()).
CONVERTED = {("neft_irs", "blocks"): (), ("mtrd", "teacher_levels"): (0.5, 1.0, 1.5), ("mtrd", "teachers"): ()}


def test_the_package_registers_exactly_the_known_methods() -> None:
    ours = {n for n, cls in METHODS.items() if cls.__module__.startswith("models.methods.")}
    assert ours == set(OLD_DEFAULTS)


@pytest.mark.parametrize("name", sorted(OLD_DEFAULTS))
def test_every_method_has_documented_frozen_options(name: str) -> None:
    cls = METHODS.get(name)
    assert cls.name == name  # the class's name is the name it is registered under
    assert cls.description() and "\n" not in cls.description()
    opts = cls.Options
    assert dataclasses.is_dataclass(opts) and issubclass(opts, MethodOptions) and opts is not MethodOptions
    for f in dataclasses.fields(opts):
        assert isinstance(f.metadata.get("help"), str) and len(f.metadata["help"]) > 10, f"{name}.{f.name}"
    for info in describe_options(opts):  # every field has a type that --opt can parse
        assert info.kind and info.help
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts().x = 1


@pytest.mark.parametrize("name", sorted(OLD_DEFAULTS))
def test_defaults_are_the_old_defaults(name: str) -> None:
    opts = METHODS.get(name).Options
    old = OLD_DEFAULTS[name]
    assert [f.name for f in dataclasses.fields(opts)] == list(old)
    fresh = opts()
    for key, value in old.items():
        assert getattr(fresh, key) == CONVERTED.get((name, key), value), f"{name}.{key}"
    assert parse_options(opts, name, old) == fresh  # the old raw defaults parse to exactly the new ones
    assert get_method(name).options == fresh


def test_values_convert_to_the_field_type() -> None:
    o = get_method("neft_ovf", n_feedback="2", beta="0.25", sigma="none", a_b=1).options
    assert (o.n_feedback, o.beta, o.sigma, o.a_b) == (2, 0.25, None, 1.0)
    assert type(o.n_feedback) is int and type(o.a_b) is float
    d = get_method("dat", rank="full", scope="GLOBAL", alpha=3, perturbations=2.0).options
    assert (d.rank, d.scope, d.alpha, d.perturbations) == (None, "global", 3.0, 2)
    m = get_method("mtrd", teacher_levels=0.5, teachers="a.pt, b.pt,", clean_teacher="no", teacher_epochs="4").options
    assert (m.teacher_levels, m.teachers, m.clean_teacher, m.teacher_epochs) == ((0.5,), ("a.pt", "b.pt"), False, 4)
    assert get_method("mtrd", teacher_levels=[1, "2"]).options.teacher_levels == (1.0, 2.0)
    assert get_method("neft_irs", blocks=["features.0", "features.3"]).options.blocks == ("features.0", "features.3")
    assert get_method("ibm_hwa", teacher=7, ramp_batches="null").options.teacher == "7"
    assert get_method("trice", recentre="On").options.recentre is True


def test_special_converters() -> None:
    assert [parse_rank(v) for v in ("full", "None", 0, "0", 5, "7")] == [None, None, None, None, 5, 7]
    assert [parse_clean_teacher(v) for v in ("true", "0", True, "teacher.pt")] == [True, False, True, "teacher.pt"]
    assert to_int("3.0") == 3 and to_bool("off") is False
    for bad, call in ((2.5, to_int), ("maybe", to_bool), (-1, parse_rank)):
        with pytest.raises(ValueError, match="must be"):
            call(bad)


@pytest.mark.parametrize(
    "method, options, message",
    [
        (
            "dat",
            {"alpah": 1},
            r"method 'dat': unknown option\(s\) alpah \(known: rank, scope, alpha, perturbations, "
            r"refresh_every, step, keep_variance, radius, ascent, layers\)",
        ),
        ("vanilla", {"scale": 2}, r"unknown option\(s\) scale \(known: none\)"),
        ("dat", {"alpha": "fast"}, "method 'dat': option alpha must be a number, got 'fast'"),
        ("dat", {"rank": "-2"}, "option rank must be >= 1, got -2"),
        ("dat", {"step": "sideways"}, "option step must be 'projection' or 'noise' or 'magnitude', got 'sideways'"),
        ("neft_ovf", {"n_feedback": 1.5}, "option n_feedback must be an integer, got 1.5"),
        ("neft_irs", {"hidden": 0}, "option hidden must be >= 1, got 0"),
        ("trice", {"recentre": "perhaps"}, "option recentre must be true or false, got 'perhaps'"),
        ("mtrd", {"teacher_levels": ","}, "option teacher_levels needs at least one number"),
        ("mtrd", {"teacher_levels": {"a": 1}}, "option teacher_levels must be comma-separated numbers"),
        ("ibm_hwa", {"teacher": ["a.pt"]}, "option teacher must be a string"),
        ("ibm_hwa", {"pretrain_epochs": -1}, "option pretrain_epochs must be >= 0, got -1"),
    ],
)
def test_bad_options_are_refused_in_one_line(method: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        get_method(method, **options)
    assert "\n" not in str(info.value)


def _ctx(model: nn.Module) -> TrainContext:
    return TrainContext(
        model=model,
        noise=noise_from_spec({"family": "gaussian", "sigma": 0.2}),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        config=TrainConfig(epochs=2, lr=0.01),
        num_classes=3,
        train_loader=[(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))],
    )


def test_a_planted_option_reaches_the_method() -> None:
    ovf = get_method("neft_ovf", n_feedback="2", beta="0.25", delta_sigma=0.1)
    ovf.prepare(_ctx(nn.Linear(5, 3)))
    assert ovf.beta == 0.25 and ovf.n == 2
    assert ovf.factors == pytest.approx([(0.2 + 0.1) / 0.2, (0.2 + 0.2) / 0.2])
    hwa = get_method("ibm_hwa", ramp_batches="5", drop_connect="0.25", clip="false")
    hwa.prepare(_ctx(nn.Linear(5, 3)))
    assert (hwa.ramp, hwa.remap, hwa.p_drop, hwa.clip) == (5, 1, 0.25, False)  # remap_every unset: one epoch
    dat = get_method("dat", rank="3", scope="Global", step="noise")
    dat.prepare(_ctx(nn.Linear(5, 3)))
    assert (dat.rank, dat.scope, dat.mode) == (3, "global", "noise")


def test_format_value_writes_what_opt_reads() -> None:
    for name in OLD_DEFAULTS:
        cls = METHODS.get(name)
        for info in describe_options(cls.Options):
            if info.default is not None and info.default != ():
                assert info.convert(format_value(info.default)) == info.default, f"{name}.{info.name}"
    assert format_value(1e-6) == "1e-06" and format_value((0.5, 1.0)) == "0.5,1" and format_value(None) == "none"
