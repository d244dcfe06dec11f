"""DAT: factored covariances, Fast = Full at full rank, Fast's kept variance, the projection and noise-sized steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from calibration.profile import NoiseProfile, SpatialModel
from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods import get_method
from models.methods._covariance import LayerCovariance, layer_covariance
from models.methods._util import norm_buffer_copies
from models.methods.dat import DAT, NoiseDirections, dat_perturbation, magnitude_step
from models.noise.apply import clean_weights
from models.noise.factory import noise_from_profile, noise_from_spec
from models.noise.profile_noise import ProfileNoise
from models.training import train
from tests.helpers.contexts import sgd_context

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
        # tied variances get a float32 QR basis: off-diagonals of V D V^T are rounding, ~n ulps of max(d)
        tol = 12 * float(torch.finfo(torch.float32).eps) * float(covs[k].d.max())
        assert torch.allclose(_implied_cov(fast, k), covs[k].dense(), atol=tol, rtol=1e-5)
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
    # each physical tile of 2x2 cells draws its own rank-2 field: two columns of B per tile
    assert isinstance(noise, ProfileNoise)
    tile = noise.device_errors("l.weight", w).tile
    assert tile is not None
    tiles = int(tile.max()) + 1
    assert tiles > 1 and cov.B is not None and cov.B.shape == (6, 2 * tiles)
    std = noise.noise_std({"l.weight": w})["l.weight"].reshape(-1)
    assert torch.allclose(cov.diag(), std**2, rtol=1e-5)  # the noise model's own per-weight variance
    draws = noise.sample_batch({"l.weight": w}, 40000, torch.Generator().manual_seed(5))["l.weight"] - w
    x = draws.reshape(40000, -1).double()
    emp = torch.cov(x.T)
    dense = cov.dense().double()
    assert torch.allclose(emp, dense, atol=0.05 * float(dense.diag().max()))
    assert torch.allclose(x.mean(0), cov.mu.double(), atol=0.03 * float(dense.diag().max()) ** 0.5)
    # Fast (k = full rank) and Full describe the same Gaussian
    dirs = NoiseDirections({"l.weight": cov}, {"l.weight": w.shape}, rank=6)
    assert torch.allclose(dirs.covariance("l.weight").double(), dense, atol=1e-6 * float(dense.max()))


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
    ctx = sgd_context(model, noise, num_classes=2, seed=3)
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


@pytest.mark.parametrize("options", [{"rank": 10}, {"rank": "full"}, {"layers": "last"}])
def test_trains_on_digits(options):
    # 768 samples: the loop validates on a split carved from them (~77), and still trains on ~690
    d = load_dataset("digits")
    ds = Dataset("digits", d.x_train[:768], d.y_train[:768], d.x_test[:120], d.y_test[:120], 10)
    cfg = TrainConfig(
        method="dat",
        method_options=options,
        noise={"family": "gaussian", "sigma": 0.3},
        epochs=3,
        lr=1e-2,
        progress=False,
        val_noise_draws=2,
    )
    h = train(cfg, dataset=ds, log=lambda _s: None).history
    assert h[-1]["loss"] < h[0]["loss"] and h[-1]["val_acc"] > 0.5


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"step": "sideways"}, "step must be"),
        ({"scope": "lobal"}, "scope must be"),
        ({"ascent": "later"}, "ascent must be"),
        ({"layers": "first"}, "layers must be"),
    ],
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


def _uniform(n: int, var: float) -> dict[str, LayerCovariance]:
    return {"l": LayerCovariance(torch.zeros(n, dtype=torch.float64), None, torch.full((n,), var, dtype=torch.float64))}


def test_paper_fast_keeps_k_over_n_of_a_diagonal_variance_and_keep_variance_all_of_it():
    """Closed form: diag(s2 I_n) has n tied eigenvalues s2; its top k carry k*s2 of the n*s2 total."""
    n, k, var, m = 40, 4, 0.09, 4000
    covs = _uniform(n, var)
    paper = NoiseDirections(covs, {"l": torch.Size([n])}, rank=k, generator=torch.Generator().manual_seed(0))
    assert float(torch.trace(paper.covariance("l"))) == pytest.approx(k * var, rel=1e-12)
    assert float(paper.trace("l")) == pytest.approx(k * var, rel=1e-12)
    full = NoiseDirections(covs, {"l": torch.Size([n])}, rank=k, keep_variance=True)
    assert full.k == 0 and torch.allclose(full.covariance("l"), torch.diag(covs["l"].d), atol=0, rtol=0)
    assert float(full.trace("l")) == pytest.approx(n * var, rel=1e-12)
    # the draws agree: E||eta||^2 = tr(Sigma); the mean of m draws of a chi^2_r * var has std var * sqrt(2r/m),
    # 0.045 var for r = k and 0.14 var for r = n, so 5 standard errors bound both checks
    gen = torch.Generator().manual_seed(1)
    sq_paper = torch.stack([paper.sample(gen)["l"].pow(2).sum() for _ in range(m)]).mean()
    sq_full = torch.stack([full.sample(gen)["l"].pow(2).sum() for _ in range(m)]).mean()
    assert float(sq_paper) == pytest.approx(k * var, abs=5 * var * (2 * k / m) ** 0.5)
    assert float(sq_full) == pytest.approx(n * var, abs=5 * var * (2 * n / m) ** 0.5)


def test_keep_variance_completes_a_correlated_layer_with_its_remaining_variance():
    noise = noise_from_profile(_spatial_profile(), read=False, stuck=False)
    assert noise is not None
    torch.manual_seed(0)
    w = torch.randn(4, 5) * 0.5
    cov = layer_covariance(noise, "l.weight", w)
    dense = cov.dense()
    shapes = {"l.weight": w.shape}
    paper = NoiseDirections({"l.weight": cov}, shapes, rank=2, generator=torch.Generator().manual_seed(0))
    kept = NoiseDirections(
        {"l.weight": cov}, shapes, rank=2, generator=torch.Generator().manual_seed(0), keep_variance=True
    )
    assert bool((torch.diag(paper.covariance("l.weight")) < torch.diag(dense) - 1e-12).any())
    assert torch.allclose(torch.diag(kept.covariance("l.weight")), torch.diag(dense), rtol=1e-5, atol=0)
    # the correlated part is the paper's top-k; only independent variance is added
    off = ~torch.eye(w.numel(), dtype=torch.bool)
    assert torch.allclose(kept.covariance("l.weight")[off], paper.covariance("l.weight")[off])
    assert float(kept.trace("l.weight")) == pytest.approx(float(torch.trace(dense)), rel=1e-5)


def test_dat_default_samples_independent_noise_exactly():
    model = nn.Linear(6, 3, bias=False)
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    assert noise is not None
    ctx = sgd_context(model, noise, num_classes=3, seed=3)
    m = DAT()
    m.prepare(ctx)
    w = {"weight": model.weight.detach()}
    dirs = m._directions(ctx, w)
    std = noise.noise_std(w)["weight"].reshape(-1)
    assert dirs.rank == 10 and dirs.k == 0
    assert torch.allclose(dirs.covariance("weight"), torch.diag(std**2), rtol=1e-5)


def test_magnitude_step_closed_form_and_it_grows_with_the_noise():
    g = {"a": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), "b": torch.tensor([[3.0]], dtype=torch.float64)}
    d = {"a": torch.tensor([0.04, 0.01, 0.09], dtype=torch.float64), "b": torch.tensor([0.16], dtype=torch.float64)}
    mu = {"a": torch.tensor([0.0, 0.1, 0.0], dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)}

    def dirs(f: float) -> NoiseDirections:
        covs = {k: LayerCovariance(mu[k], None, f * f * d[k]) for k in d}
        return NoiseDirections(covs, {"a": torch.Size([3]), "b": torch.Size([1, 1])}, rank=None)

    eps = magnitude_step(g, dirs(1.0), radius=0.5)
    gf = torch.cat([g["a"], g["b"].reshape(-1)])
    sg = torch.cat([d["a"] * g["a"], d["b"] * g["b"].reshape(-1)])  # Sigma g
    expected = 0.5 * sg / float(gf @ sg) ** 0.5  # radius * Sigma g / sqrt(g^T Sigma g)
    assert torch.allclose(eps["a"], mu["a"] + expected[:3]) and torch.allclose(eps["b"].reshape(-1), expected[3:])
    # the noise 3x larger: the noise-sized step is 3x larger, the paper's projection does not move
    eps3 = magnitude_step(g, dirs(3.0), radius=0.5)
    assert torch.allclose(eps3["a"] - mu["a"], 3 * (eps["a"] - mu["a"])) and torch.allclose(eps3["b"], 3 * eps["b"])
    eta = {"a": torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64), "b": torch.tensor([[0.4]], dtype=torch.float64)}
    p1, p3 = dat_perturbation(g, eta), dat_perturbation(g, {k: 3 * v for k, v in eta.items()})
    assert all(torch.allclose(p1[k], p3[k]) for k in g)


def test_magnitude_step_is_the_steepest_ascent_of_its_size_in_the_noise_metric():
    """Cauchy-Schwarz in the Sigma^-1 metric: no v at the same Mahalanobis distance raises g . v more."""
    torch.manual_seed(0)
    n = 12
    B = torch.randn(n, 2, dtype=torch.float64) * 0.2
    cov = LayerCovariance(torch.zeros(n, dtype=torch.float64), B, torch.rand(n, dtype=torch.float64) * 0.05 + 0.01)
    g = {"l": torch.randn(n, dtype=torch.float64)}
    dirs = NoiseDirections({"l": cov}, {"l": torch.Size([n])}, rank=None)
    eps = magnitude_step(g, dirs, radius=2.0)["l"]
    sigma, inv = cov.dense(), torch.linalg.inv(cov.dense())
    assert float(eps @ inv @ eps) ** 0.5 == pytest.approx(2.0, rel=1e-9)  # Mahalanobis distance = radius
    # the loss rises (to first order) by radius standard deviations of g . eta, eta ~ N(0, Sigma)
    assert float(g["l"] @ eps) == pytest.approx(2.0 * float(g["l"] @ sigma @ g["l"]) ** 0.5, rel=1e-9)
    vs = torch.randn(500, n, dtype=torch.float64)
    vs = vs / torch.sqrt(torch.einsum("bi,ij,bj->b", vs, inv, vs))[:, None] * 2.0
    assert float((vs @ g["l"]).max()) < float(g["l"] @ eps)


@pytest.mark.parametrize("step", ["magnitude", "noise"])
def test_noise_sized_steps_use_radius_and_the_gradient_at_the_perturbed_weights(step):
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False)
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    assert noise is not None
    ctx = sgd_context(model, noise, num_classes=2, seed=3)
    m = DAT(rank="full", alpha=5.0, radius=0.5, step=step, perturbations=2)
    m.prepare(ctx)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    logs = m.training_step(ctx, x, y)
    gen = torch.Generator().manual_seed(3)
    w = model.weight.detach().clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(x @ w.T, y), w)[0]
    cov = layer_covariance(noise, "weight", w)
    dirs = NoiseDirections({"weight": cov}, {"weight": w.shape}, rank=None)
    if step == "magnitude":  # deterministic: one evaluation stands for all p
        steps = [magnitude_step({"weight": g}, dirs, 0.5)["weight"]]
    else:  # radius (not alpha) times the uphill-oriented draw, p draws averaged
        steps = [0.5 * dat_perturbation({"weight": g}, {"weight": cov.sample(gen).view_as(w)}, "noise")["weight"]]
        steps.append(0.5 * dat_perturbation({"weight": g}, {"weight": cov.sample(gen).view_as(w)}, "noise")["weight"])
    ref = torch.zeros_like(w)
    total = 0.0
    for s in steps:
        wp = (w + s).detach().requires_grad_(True)
        loss = F.cross_entropy(x @ wp.T, y) / len(steps)
        ref += torch.autograd.grad(loss, wp)[0]
        total += float(loss.detach())
    assert model.weight.grad is not None
    assert torch.allclose(model.weight.grad, ref, atol=1e-6) and logs["loss"] == pytest.approx(total, rel=1e-6)


# ------------------------------------------------------------------ the refresh schedule and the reused buffers


@pytest.mark.parametrize("opts", [{"keep_variance": False}, {"keep_variance": False, "scope": "global"}, {}])
def test_every_step_schedule_replays_the_per_step_rebuild_bit_for_bit(opts):
    """refresh_every=1 is the former DAT: a fresh covariance and random top-k basis at every step, same numbers."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3, bias=False)
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    ctx = sgd_context(model, noise, num_classes=3, seed=3)
    m = DAT(rank=2, refresh_every=1, **opts)
    m.prepare(ctx)
    w = model.weight.detach().clone()
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(5, 6, generator=torch.Generator().manual_seed(10 + i)) for i in range(4)]
    y = torch.tensor([0, 1, 2, 1, 0])
    for step, x in enumerate(xs):
        ctx.optimizer.zero_grad(set_to_none=True)
        m.training_step(ctx, x, y)
        ctx.optimizer.step()
        ctx.step += 1
        # replay of the per-step algorithm: rebuild, sample afresh (no buffers), project, gradient at w + alpha eps
        wr = w.clone().requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(F.linear(x, wr), y), wr)[0]
        cov = layer_covariance(noise, "weight", wr)
        dirs = NoiseDirections(
            {"weight": cov}, {"weight": w.shape}, 2, gen, opts.get("scope", "layer"), opts.get("keep_variance", True)
        )
        eta = dirs.sample(gen)
        wp = (wr + 10.0 * dat_perturbation({"weight": g}, eta)["weight"]).detach().requires_grad_(True)
        ref = torch.autograd.grad(F.cross_entropy(F.linear(x, wp), y), wp)[0]
        w = w.add(ref, alpha=-0.1)  # what SGD does (a fused multiply-add: w - 0.1 * ref can round differently)
        assert torch.equal(model.weight.detach(), w), f"step {step}"
    assert m.rebuilds == len(xs)


def test_reused_buffers_draw_the_same_numbers_as_fresh_tensors():
    """sample(reuse=True) consumes the generator as sample() does and combines the same operations: equal bits."""
    torch.manual_seed(0)
    noise = noise_from_profile(_spatial_profile(), read=False, stuck=False)
    w = {"a.weight": torch.randn(4, 5) * 0.5, "b.weight": torch.randn(3, 4) * 0.5}
    covs = {k: layer_covariance(noise, k, v) for k, v in w.items()}
    diag = {k: LayerCovariance(c.mu, None, c.diag()) for k, c in covs.items()}
    shapes = {k: v.shape for k, v in w.items()}
    configs = [
        (covs, None, "layer", False),  # DAT-Full, correlated (sparse tiled B)
        (covs, 3, "layer", True),  # top-k plus the remaining variance
        (covs, 3, "global", False),
        (diag, 3, "layer", False),  # random basis of tied variances
        (diag, 3, "layer", True),  # exact independent draws, k = 0
    ]
    for cv, rank, scope, keep in configs:
        dirs = NoiseDirections(cv, shapes, rank, torch.Generator().manual_seed(1), scope, keep)
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        for _ in range(3):
            fresh, reused = dirs.sample(g1), dirs.sample(g2, reuse=True)
            assert all(torch.equal(fresh[k], reused[k]) for k in w), (rank, scope, keep)
        assert torch.equal(g1.get_state(), g2.get_state())
    # reused buffers are overwritten by the next call; fresh tensors are not
    dirs = NoiseDirections(covs, shapes, None)
    first = dirs.sample(torch.Generator().manual_seed(0), reuse=True)["a.weight"]
    kept = first.clone()
    dirs.sample(torch.Generator().manual_seed(1), reuse=True)
    assert not torch.equal(first, kept)


def test_refresh_schedule_rebuilds_once_per_epoch_or_every_n_steps():
    from models.methods.dat import parse_refresh, refresh_due

    assert refresh_due("epoch", 0, 0, None, None)  # never built
    assert not refresh_due("epoch", 25, 0, 0, 0) and refresh_due("epoch", 26, 1, 0, 0)
    assert not refresh_due(4, 3, 0, 0, 0) and refresh_due(4, 4, 0, 0, 0) and not refresh_due(4, 6, 1, 4, 0)
    assert parse_refresh("Epoch") == "epoch" and parse_refresh("3") == 3
    with pytest.raises(ValueError, match=r"must be >= 1, got 0 \(or 'epoch'\)"):
        parse_refresh(0)
    with pytest.raises(ValueError, match="option refresh_every must be an integer, got 'weekly'"):
        get_method("dat", refresh_every="weekly")
    assert DAT().options.refresh_every == "epoch"  # the default: Algorithm 1's one build, once per epoch

    torch.manual_seed(0)
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 1])
    for schedule, epochs, steps, builds in (("epoch", 3, 4, 3), (3, 2, 4, 3), (1, 1, 5, 5)):
        model = nn.Linear(6, 3, bias=False)
        ctx = sgd_context(model, noise, num_classes=3, seed=3)
        m = DAT(rank=2, keep_variance=False, refresh_every=schedule)
        m.prepare(ctx)
        seen = []
        for epoch in range(epochs):
            ctx.epoch = epoch
            for _ in range(steps):
                ctx.optimizer.zero_grad(set_to_none=True)
                m.training_step(ctx, x, y)
                ctx.optimizer.step()
                ctx.step += 1
                seen.append(m.directions)
        assert m.rebuilds == builds, schedule
        assert len({id(d) for d in seen}) == builds
        if schedule == "epoch":  # one basis per epoch, built at its first step
            assert all(seen[e * steps] is seen[e * steps + s] for e in range(epochs) for s in range(steps))


def test_previous_ascent_reuses_the_last_descent_gradient_with_one_pass_per_step():
    """ascent=previous: step 1 is Algorithm 1's (clean pass + perturbed pass); step 2 builds eps from the
    gradient step 1 descended with, and runs the perturbed pass only."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False)
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    ctx = sgd_context(model, noise, num_classes=2, seed=3)
    m = get_method("dat", rank="full", alpha=5.0, ascent="previous", refresh_every=1)  # rebuilt from each step's w
    m.prepare(ctx)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    out1 = m.training_step(ctx, x, y)
    g1 = model.weight.grad.detach().clone()  # what step 1 descends with
    assert "loss_clean" in out1
    ctx.optimizer.step()
    ctx.optimizer.zero_grad()
    gen_state = ctx.generator.get_state()
    w = model.weight.detach().clone()
    forwards_before = len(calls)
    out2 = m.training_step(ctx, x, y)
    # the clean pass (a plain model call) is skipped; the perturbed pass runs through functional_call, which
    # also fires the module's hook: one forward in all
    assert len(calls) - forwards_before == 1 and "loss_clean" not in out2
    gen = torch.Generator()
    gen.set_state(gen_state)
    eta = layer_covariance(noise, "weight", w).sample(gen).view_as(w)
    wp = (w + 5.0 * dat_perturbation({"weight": g1}, {"weight": eta})["weight"]).requires_grad_(True)
    z = x @ wp.T
    ref = torch.autograd.grad(F.cross_entropy(z, y), wp)[0]
    # Float32 on both sides, in other orders (the draw through DAT's basis here through the covariance): wp may
    # differ by <= 4 eps |wp|max, so the logits by <= 4 eps (1 + |z|max + 3 |x|max |wp|max) (three-term sums);
    # each p - y moves by at most twice that (two classes), each gradient entry (a batch mean of (p - y) x) by
    # |x|max times that, plus <= 4 eps |x|max for the mean's own rounding: 16 eps (...) |x|max bounds it all.
    # A wrong gradient, draw or step moves entries by ~1e-2, hundreds of times more.
    eps = torch.finfo(torch.float32).eps
    x_max, w_max = float(x.abs().max()), float(wp.detach().abs().max())
    tol = 16 * eps * (1 + float(z.detach().abs().max()) + 3 * x_max * w_max) * x_max
    assert torch.allclose(model.weight.grad, ref, rtol=0, atol=tol)


def _head_net(tail: nn.Module | None = None, batchnorm: bool = False) -> nn.Module:
    """Float64 5 -> 8 -> 3 MLP, its Linear head last (or followed by ``tail``), a BatchNorm before its ReLU."""
    torch.manual_seed(1)
    layers: list[nn.Module] = [nn.Linear(5, 8), *([nn.BatchNorm1d(8)] if batchnorm else []), nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers, *([tail] if tail is not None else [])).double()


def _one_step(model: nn.Module, shared: bool, **opts) -> tuple[DAT, dict[str, torch.Tensor], int, nn.Module]:
    """One DAT step with layers=last on a copy of ``model`` (the shared pass, or forced onto two passes): the
    method, every parameter's gradient, the forward passes it ran (counted at the first layer), the copy."""
    import copy

    model = copy.deepcopy(model)
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    ctx = sgd_context(model, noise, num_classes=3, seed=5)
    m = get_method("dat", rank="full", alpha=5.0, layers="last", **opts)
    assert isinstance(m, DAT)
    m.prepare(ctx)
    if not shared:  # what the first step sets up for layers=last, less the head: Algorithm 1's two passes
        head = list(clean_weights(model))[-1]
        m._weights, m._head = {head: dict(model.named_parameters())[head]}, None
        m._norm_buffers = bool(norm_buffer_copies(model))
    passes = []
    model[0].register_forward_hook(lambda *_: passes.append(1))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    m.training_step(ctx, x, y)
    return m, {n: p.grad.detach().clone() for n, p in model.named_parameters()}, len(passes), model


@pytest.mark.parametrize("perturbations", [1, 3])
def test_last_layer_ascent_on_one_forward_equals_the_two_pass_algorithm(perturbations):
    """layers=last with a Linear head: one forward and one backward per step, and the gradients of Algorithm 1's
    two passes (clean gradient of the head, then every layer's gradient at the perturbed head).

    Float64, the same draws: the shared pass forms the perturbed logits as h W^T + b + h Delta^T, the two-pass
    code as h (W + Delta)^T + b, so a logit differs by at most L = (n + 2) eps max_b sum_i |h_bi| (|W| + |Delta|)max
    (n = 8 inputs of the head; |Delta| <= alpha ||g||, g the clean head gradient, as a projection on eta is no
    longer than g). A softmax output then moves by <= 2 L; the head's gradient (batch means of s h) by
    <= 2 L |h|max, the hidden layer's (through 3 logits and (W + Delta), then times x) by <= 2 L 3 (|W| + |Delta|)
    max(1, |x|max): 2 L G with G the larger factor; each side's own sums (<= n + 6 terms) round by <= 2 (n + 6)
    eps G more. Leaving Delta out (the clean gradient) moves the head's entries by ~1e-2."""
    model = _head_net()
    m_one, one, passes_one, _ = _one_step(model, shared=True, perturbations=perturbations)
    m_two, two, passes_two, _ = _one_step(model, shared=False, perturbations=perturbations)
    assert (passes_one, passes_two) == (1, 1 + perturbations)  # the two-pass code: a clean pass, one per draw
    assert (m_one.shared_passes, m_two.shared_passes) == (1, 0)
    assert set(m_one.directions.covs) == {"2.weight"}  # only the head is perturbed
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g_clean = model[2].weight.grad.detach()
    with torch.no_grad():
        h = torch.relu(model[0](x))
    eps, n = torch.finfo(torch.float64).eps, 8
    w_delta = float(model[2].weight.detach().abs().max()) + 5.0 * float(g_clean.norm())  # |W| + |Delta|, alpha 5
    logit = (n + 2) * eps * float(h.abs().sum(1).max()) * w_delta
    g_bound = max(float(h.abs().max()), 3 * w_delta * max(1.0, float(x.abs().max())))
    tol = (2 * logit + 2 * (n + 6) * eps) * g_bound
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=0, atol=tol), name
    assert tol < 1e-9 and float((g_clean - one["2.weight"]).abs().max()) > 1e-3


def test_last_layer_ascent_falls_back_to_two_passes_when_the_head_is_not_the_output():
    """A head followed by another operation: the model's output is not the head's, so two passes (and only the
    head perturbed)."""
    m, grads, passes, _ = _one_step(_head_net(tail=nn.Tanh()), shared=True)
    assert passes == 2 and m.shared_passes == 0 and set(m.directions.covs) == {"2.weight"} and m._head is None
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads.values())


def test_last_layer_ascent_on_one_forward_moves_batchnorm_statistics_once():
    """With a BatchNorm the clean forward runs on clones of its statistics; the shared pass hands the moved
    clones to the model: the same statistics as Algorithm 1's two passes (moved once, by the perturbed forward)."""
    import copy

    model = _head_net(batchnorm=True)
    before = copy.deepcopy(model[1].running_mean)
    m_one, _, _, one = _one_step(model, shared=True)
    m_two, _, _, two = _one_step(model, shared=False)
    assert m_one.shared_passes == 1 and m_two.shared_passes == 0
    stats = [dict(net.named_buffers()) for net in (one, two)]
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(stats[0][key], stats[1][key]), key
    assert not torch.equal(stats[0]["1.running_mean"], before)  # they did move


def test_last_layer_ascent_with_previous_gradients_keeps_the_one_pass_scheme():
    """ascent=previous with layers=last: its own scheme (two passes on the first step, then one pass from the
    last descent gradient), with only the head perturbed; no shared pass."""
    import copy

    model = copy.deepcopy(_head_net())
    ctx = sgd_context(model, noise_from_spec({"family": "gaussian", "sigma": 0.3}), num_classes=3, seed=5)
    m = get_method("dat", rank="full", alpha=5.0, layers="last", ascent="previous")
    assert isinstance(m, DAT)
    m.prepare(ctx)
    passes: list[int] = []
    model[0].register_forward_hook(lambda *_: passes.append(1))
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(2):
        m.training_step(ctx, x, y)
        ctx.optimizer.step()
        ctx.optimizer.zero_grad()
    assert len(passes) == 3 and m.shared_passes == 0 and set(m.directions.covs) == {"2.weight"}
    assert m._g_prev is not None and set(m._g_prev) == {"2.weight"}
