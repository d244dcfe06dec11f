"""MTRD: the per-sample alpha of Note 4 eq. 4, the distillation loss by hand, teachers trained or loaded."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import save_checkpoint
from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods.mtrd import kl_teacher_student, mtrd_alpha, mtrd_loss
from models.training import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    # 640 samples: the loop validates on a split carved from them (~64), and still trains on ~576
    d = load_dataset("digits")
    return Dataset("digits", d.x_train[:640], d.y_train[:640], d.x_test[:120], d.y_test[:120], 10)


def test_alpha_matches_the_formula():
    ps = torch.tensor([0.2, 0.9, 0.5, 0.05])
    pt = torch.tensor([0.9, 0.2, 0.5, 0.99])
    expected = [1 - math.exp(-math.log(a) / math.log(b)) for a, b in zip(ps.tolist(), pt.tolist())]
    assert mtrd_alpha(ps, pt).tolist() == pytest.approx(expected, rel=1e-5)
    a = mtrd_alpha(ps, pt)
    assert a[0] > a[2] > a[1]  # confident teacher + unsure student weighs most
    assert float(a[2]) == pytest.approx(1 - math.exp(-1))


def test_alpha_is_finite_and_bounded_at_the_extremes():
    ps = torch.tensor([1.0, 0.0, 1.0, 0.0])
    pt = torch.tensor([1.0, 1.0, 0.0, 0.0])
    a = mtrd_alpha(ps, pt, eps=1e-6)
    assert torch.isfinite(a).all() and bool(((a >= 0) & (a <= 1)).all())
    assert float(a[1]) == pytest.approx(1.0, abs=1e-6)  # teacher sure, student wrong -> ~1
    assert float(a[2]) < 1e-3  # teacher wrong, student sure -> ~0


def test_alpha_is_detached():
    ps = torch.tensor([0.3], requires_grad=True)
    assert not mtrd_alpha(ps, torch.tensor([0.8])).requires_grad


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    s = torch.randn(4, 3, requires_grad=True)
    teachers = [torch.randn(4, 3), torch.randn(4, 3)]
    y = torch.tensor([0, 2, 1, 1])
    loss, logs = mtrd_loss(s, teachers, y, temperature=1.0, kd_weight=0.5)
    ps = F.softmax(s.detach(), -1)[torch.arange(4), y]
    total = F.cross_entropy(s.detach(), y)
    kd = 0.0
    for t in teachers:
        pt = F.softmax(t, -1)[torch.arange(4), y]
        alpha = 1 - torch.exp(-torch.log(ps) / torch.log(pt))
        p = F.softmax(t, -1)
        kl = (p * (torch.log(p) - F.log_softmax(s.detach(), -1))).sum(-1)
        kd = kd + (alpha * kl).mean()
    assert float(loss.detach()) == pytest.approx(float(total + 0.5 * kd), rel=1e-5)
    assert logs["kd"] == pytest.approx(float(kd), rel=1e-5)
    loss.backward()
    assert s.grad is not None
    # temperature scaling: T^2 * KL of softened distributions
    t2 = kl_teacher_student(teachers[0], s.detach(), temperature=2.0)
    p = F.softmax(teachers[0] / 2, -1)
    ref = 4 * (p * (torch.log(p) - F.log_softmax(s.detach() / 2, -1))).sum(-1)
    assert torch.allclose(t2, ref, atol=1e-6)


def test_trains_teachers_then_student(small_digits, tmp_path):
    cfg = TrainConfig(
        method="mtrd",
        method_options={"teacher_levels": "0.5,1.5", "teacher_epochs": 2},
        noise={"family": "gaussian", "sigma": 0.3},
        epochs=3,
        lr=1e-2,
        progress=False,
        val_noise_draws=2,
    )
    res = train(cfg, dataset=small_digits, log=lambda _s: None)
    h = res.history
    assert h[-1]["val_acc"] > 0.5 and 0.0 <= h[-1]["alpha_mean"] < 1.0 and h[-1]["kd"] >= 0.0
    teachers = res.checkpoint["train_state"]["method"]["teachers"]
    assert len(teachers) == 3  # clean + two noise levels
    assert set(teachers[0]) == set(res.model.state_dict())  # same architecture as the student
    assert not torch.equal(teachers[0]["features.0.weight"], teachers[1]["features.0.weight"])
    # a saved model file can serve as a teacher
    path = tmp_path / "teacher.pt"
    save_checkpoint(res.checkpoint, path)
    cfg2 = TrainConfig(
        method="mtrd",
        method_options={"teachers": str(path), "clean_teacher": False},
        noise={"family": "gaussian", "sigma": 0.3},
        epochs=1,
        lr=3e-3,
        progress=False,
        val_noise_draws=1,
    )
    res2 = train(cfg2, dataset=small_digits, log=lambda _s: None)
    assert len(res2.checkpoint["train_state"]["method"]["teachers"]) == 1
    assert torch.equal(
        res2.checkpoint["train_state"]["method"]["teachers"][0]["features.0.weight"],
        res.model.state_dict()["features.0.weight"].cpu(),
    )


def test_bad_options_are_rejected(small_digits):
    cfg = TrainConfig(
        method="mtrd",
        method_options={"teacher_levels": "-1"},
        noise={"family": "gaussian", "sigma": 0.3},
        epochs=1,
        progress=False,
    )
    with pytest.raises(ValueError, match="teacher levels"):
        train(cfg, dataset=small_digits, log=lambda _s: None)
    with pytest.raises(ValueError, match="unknown option"):
        train(
            TrainConfig(
                method="mtrd",
                method_options={"nope": 1},
                noise={"family": "gaussian", "sigma": 0.3},
                epochs=1,
                progress=False,
            ),
            dataset=small_digits,
            log=lambda _s: None,
        )


def test_the_teacher_set_is_the_one_the_user_names():
    """The paper's teacher set is in its main manuscript (not available): the options name it, nothing is added."""
    from models.methods import TrainContext
    from models.methods.mtrd import MTRD
    from models.methods.options import describe_options
    from models.noise.factory import noise_from_spec

    help_of = {o.name: o.help for o in describe_options(MTRD.Options)}
    assert "not the paper's" in help_of["teacher_levels"]
    d = load_dataset("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    assert noise is not None and noise.magnitude is not None
    ctx = TrainContext(
        model=model,
        noise=noise,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        config=TrainConfig(epochs=1, lr=1e-2),
        num_classes=10,
        train_loader=[(d.x_train[:64], d.y_train[:64])],
    )
    m = MTRD(teacher_levels="2", clean_teacher=False, teacher_epochs=1)
    m.prepare(ctx)
    teacher_noise = m.teacher_noises[0]
    assert len(m.teachers) == 1 and teacher_noise is not None
    assert teacher_noise.magnitude == pytest.approx(2 * noise.magnitude)  # level 2 = twice the run's noise
