"""DAT: factored covariances (diagonal and spatial profile), Fast = Full at full rank, the projection step, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from calibration.profile import NoiseProfile, SpatialModel
from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods import TrainContext, get_method
from models.methods._covariance import LayerCovariance, layer_covariance
from models.methods.dat import NoiseDirections, dat_perturbation
from models.noise.factory import noise_from_profile, noise_from_spec
from models.training import train

torch.set_num_threads(1)


def _spatial_profile() -> NoiseProfile:
    prof = NoiseProfile.from_paper("gaussian", sigma=0.05)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 2)) * 0.6e-6  # 2x2 cell grid, rank-2 correlated part (S)
    cov = a @ a.T
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:2]
    prof.spatial = SpatialModel(
        shape=(2, 2), eigvals=vals[order], eigvecs=vecs[:, order], n_repeats=1, total_variance=float(np.trace(cov))
    )
    return prof


def _implied_cov(dirs: NoiseDirections, name: str) -> torch.Tensor:
    f = dirs.factors[name]
    return f @ f.T


def test_fast_equals_full_at_full_rank_diagonal():
    noise = noise_from_spec({"family": "state_dependent", "model": "RRAM2", "sigma": 0.2})
    torch.manual_seed(0)
    w = {"a.weight": torch.randn(3, 4), "b.weight": torch.randn(2, 3)}
    covs = {k: layer_covariance(noise, k, v) for k, v in w.items()}
    fast = NoiseDirections(covs, {k: v.shape for k, v in w.items()}, rank=12 + 6)
    for k in w:
        assert torch.allclose(_implied_cov(fast, k), covs[k].dense(), atol=1e-10, rtol=1e-5)
    # the covariance is the noise model's own per-weight variance
    std = noise.noise_std(w)
    for k in w:
        assert torch.allclose(covs[k].d.sqrt(), std[k].reshape(-1), rtol=1e-5)


def test_fast_keeps_the_globally_largest_eigenpairs():
    d1, d2 = torch.tensor([5.0, 1.0, 3.0]), torch.tensor([4.0, 0.5])
    covs = {"a": LayerCovariance(torch.zeros(3), None, d1), "b": LayerCovariance(torch.zeros(2), None, d2)}
    dirs = NoiseDirections(covs, {"a": torch.Size([3]), "b": torch.Size([2])}, rank=3, scope="global")
    assert torch.allclose(torch.diag(_implied_cov(dirs, "a")), torch.tensor([5.0, 0.0, 3.0]))
    assert torch.allclose(torch.diag(_implied_cov(dirs, "b")), torch.tensor([4.0, 0.0]))
    eta = dirs.sample(torch.Generator().manual_seed(0))
    assert float(eta["a"][1]) == 0.0 and float(eta["b"][1]) == 0.0
    # per-layer scope: the top-k of every layer's block, k = 1 here
    per = NoiseDirections(covs, {"a": torch.Size([3]), "b": torch.Size([2])}, rank=1, scope="layer")
    assert per.k == 2
    assert torch.allclose(torch.diag(_implied_cov(per, "a")), torch.tensor([5.0, 0.0, 0.0]))
    assert torch.allclose(torch.diag(_implied_cov(per, "b")), torch.tensor([4.0, 0.0]))
    eta = per.sample(torch.Generator().manual_seed(0))
    assert float(eta["a"][0]) != 0.0 and float(eta["b"][0]) != 0.0 and float(eta["a"][2]) == 0.0
    with pytest.raises(ValueError, match="scope"):
        NoiseDirections(covs, {"a": torch.Size([3]), "b": torch.Size([2])}, rank=1, scope="lobal")


def test_low_rank_plus_diagonal_top_eigen_is_exact_at_full_rank():
    torch.manual_seed(0)
    B = torch.randn(30, 3, dtype=torch.float64)
    d = torch.rand(30, dtype=torch.float64)
    cov = LayerCovariance(torch.zeros(30, dtype=torch.float64), B, d)
    vals, vecs = cov.top_eigen(30)
    assert torch.allclose(vecs @ torch.diag(vals) @ vecs.T, cov.dense(), atol=1e-9)
    ref = torch.linalg.eigvalsh(cov.dense()).flip(0)[:4]
    got, _ = cov.top_eigen(4, torch.Generator().manual_seed(1), iters=30)
    assert torch.allclose(got.double(), ref, rtol=1e-6)


def test_spatial_profile_covariance_matches_samples():
    noise = noise_from_profile(_spatial_profile(), read=False, stuck=False)
    torch.manual_seed(0)
    w = torch.randn(2, 3) * 0.5
    cov = layer_covariance(noise, "l.weight", w)
    assert cov.B is not None and cov.B.shape == (6, 2)
    draws = noise.sample_batch({"l.weight": w}, 40000, torch.Generator().manual_seed(5))["l.weight"] - w
    x = draws.reshape(40000, -1).double()
    emp = torch.cov(x.T)
    dense = cov.dense().double()
    assert torch.allclose(emp, dense, atol=0.05 * float(dense.diag().max()))
    assert torch.allclose(x.mean(0), cov.mu.double(), atol=0.03 * float(dense.diag().max()) ** 0.5)
    # Fast (k = full rank) and Full describe the same Gaussian
    dirs = NoiseDirections({"l.weight": cov}, {"l.weight": w.shape}, rank=6)
    assert torch.allclose(_implied_cov(dirs, "l.weight").double(), dense, atol=1e-6 * float(dense.max()))


def test_projection_step_matches_algorithm_line_9():
    g = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    eta = {"a": torch.tensor([0.5, -1.0]), "b": torch.tensor([[2.0]])}
    eps = dat_perturbation(g, eta)
    coef = (0.5 - 2.0 + 6.0) / (0.25 + 1.0 + 4.0)
    assert torch.allclose(eps["a"], coef * eta["a"]) and torch.allclose(eps["b"], coef * eta["b"])
    resid = sum(float(((g[k] - eps[k]) * eta[k]).sum()) for k in g)
    assert resid == pytest.approx(0.0, abs=1e-6)  # g - eps is orthogonal to eta
    noisy = dat_perturbation(g, eta, "noise")
    assert torch.equal(noisy["a"], eta["a"])  # g . eta > 0 -> eta itself


def test_step_uses_the_gradient_at_the_perturbed_weights():
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False)
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    ctx = TrainContext(
        model=model,
        noise=noise,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(3),
        config=TrainConfig(),
        num_classes=2,
    )
    m = get_method("dat", rank="full", alpha=5.0)
    m.prepare(ctx)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    m.training_step(ctx, x, y)
    # replay: same generator state -> same eta
    gen = torch.Generator().manual_seed(3)
    w = model.weight.detach().clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(x @ w.T, y), w)[0]
    cov = layer_covariance(noise, "weight", w)
    eta = cov.sample(gen).view_as(w)
    wp = (w + 5.0 * dat_perturbation({"weight": g}, {"weight": eta})["weight"]).detach().requires_grad_(True)
    ref = torch.autograd.grad(F.cross_entropy(x @ wp.T, y), wp)[0]
    assert torch.allclose(model.weight.grad, ref, atol=1e-6)


@pytest.mark.parametrize("rank", [10, "full"])
def test_trains_on_digits(rank):
    d = load_dataset("digits")
    ds = Dataset("digits", d.x_train[:384], d.y_train[:384], d.x_test[:120], d.y_test[:120], 10)
    cfg = TrainConfig(
        method="dat",
        method_options={"rank": rank},
        noise={"family": "gaussian", "sigma": 0.3},
        epochs=3,
        lr=1e-2,
        progress=False,
        val_noise_draws=2,
    )
    h = train(cfg, dataset=ds, log=lambda _s: None).history
    assert h[-1]["loss"] < h[0]["loss"] and h[-1]["val_acc"] > 0.5


@pytest.mark.parametrize(
    "opts, message", [({"step": "sideways"}, "step must be"), ({"scope": "lobal"}, "scope must be")]
)
def test_bad_step_and_scope_options(opts, message):
    # the method's Options refuse the value when the method is built, before any data is touched
    with pytest.raises(ValueError, match=message):
        get_method("dat", **opts)


def test_diagonal_top_eigen_spreads_over_tied_variances():
    """Tied variances (uniform device noise) give a random orthonormal basis of the tied span, not k weights."""
    d = torch.tensor([5.0, 3.0] + [1.0] * 40 + [0.5], dtype=torch.float64)
    cov = LayerCovariance(torch.zeros(43, dtype=torch.float64), None, d)
    vals, vecs = cov.top_eigen(6, torch.Generator().manual_seed(0))
    assert torch.allclose(vals, torch.tensor([5.0, 3.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(vecs.T @ vecs, torch.eye(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cov.matvec(vecs), vecs * vals, atol=1e-12)  # true eigenvectors
    assert vecs[0, 0] == 1.0 and vecs[1, 1] == 1.0
    share = (vecs[:, 2:] ** 2).sum(1)  # projector diagonal
    assert float(share[:2].abs().max()) == 0.0 and float(share[-1]) == 0.0
    assert bool((share[2:42] > 0).all()) and float(share.sum()) == pytest.approx(4.0)
    # a different generator gives a different (equally exact) basis of the same span
    _, other = cov.top_eigen(6, torch.Generator().manual_seed(1))
    assert not torch.allclose(other[:, 2:], vecs[:, 2:])
    p1, p2 = vecs[:, :2] @ vecs[:, :2].T, other[:, :2] @ other[:, :2].T
    assert torch.allclose(p1, p2)
