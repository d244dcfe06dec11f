"""Per-layer weight-noise covariance in factored form (mu, B, d): Sigma = B B^T + diag(d), for DAT.

Built from the run's noise model: the profile's spatial model (cells of the array, tiled over the
devices of a layer in device order, as ``ProfileNoise`` samples it) gives B; the independent
per-device / per-level part gives d. Families without correlations have B = None (diagonal).
When every physical tile of the layer draws its own spatial field (``DeviceErrors.tile``), B has k
columns per tile and is stored sparse: a weight touches only the few tiles its devices sit in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.noise.base import WeightNoise
from models.noise.families import CensoredNoise, LogNormalNoise, MomentNoise, censored_mean


@dataclass
class LayerCovariance:
    """Mean mu (n,), optional low-rank factor B (n, r; dense, or sparse COO when tiled) and diagonal d (n,)."""

    mu: Tensor
    B: Tensor | None
    d: Tensor

    @property
    def n(self) -> int:
        return int(self.d.numel())

    def _b(self, u: Tensor) -> Tensor:
        """B @ u for u of shape (r, m) (B dense or sparse)."""
        assert self.B is not None
        return torch.sparse.mm(self.B, u) if self.B.is_sparse else self.B @ u

    def _bt(self, v: Tensor) -> Tensor:
        """B^T @ v for v of shape (n, m) (B dense or sparse)."""
        assert self.B is not None
        return torch.sparse.mm(self.B.t(), v) if self.B.is_sparse else self.B.T @ v

    def diag(self) -> Tensor:
        """Per-weight variances: diag(Sigma) = d + the row sums of B^2."""
        out = self.d.clamp(min=0)
        if self.B is not None:
            sq = torch.sparse.sum(self.B * self.B, 1).to_dense() if self.B.is_sparse else (self.B**2).sum(1)
            out = out + sq
        return out

    def trace(self) -> Tensor:
        """tr(Sigma): the expected squared norm of the zero-mean noise part."""
        return self.diag().sum()

    def dense(self) -> Tensor:
        """The n x n covariance (tests and tiny layers only)."""
        cov = torch.diag(self.d)
        if self.B is not None:
            b = self.B.to_dense() if self.B.is_sparse else self.B
            cov = cov + b @ b.T
        return cov

    def matvec(self, v: Tensor) -> Tensor:
        """Sigma @ v for v of shape (n, m) without forming Sigma."""
        out = self.d[:, None] * v
        if self.B is not None:
            out = out + self._b(self._bt(v))
        return out

    def sample(self, generator: torch.Generator | None) -> Tensor:
        """One exact draw from N(mu, Sigma) (DAT-Full's sampler): mu + B z_r + sqrt(d) z_n."""
        z = torch.randn(self.n, generator=generator, device=self.d.device, dtype=self.d.dtype)
        eta = self.mu + self.d.clamp(min=0).sqrt() * z
        if self.B is not None:
            zr = torch.randn(self.B.shape[1], generator=generator, device=self.d.device, dtype=self.d.dtype)
            eta = eta + self._b(zr[:, None])[:, 0]
        return eta

    def top_eigen(
        self, k: int, generator: torch.Generator | None = None, iters: int = 4, oversample: int = 8
    ) -> tuple[Tensor, Tensor]:
        """Largest k eigenpairs (values (k,), vectors (n, k)) of Sigma.

        Diagonal Sigma: the coordinate vectors of the variances above the k-th largest, completed by a
        random orthonormal basis of the eigenspace of the variances tied with it (see ``_diagonal_top``).
        With a factor B: randomised subspace iteration on the implicit operator (exact when
        k + oversample >= n).
        """
        k = min(k, self.n)
        if self.B is None:
            return _diagonal_top(self.d, k, generator)
        m = min(self.n, k + oversample)
        if m >= self.n:
            vals, vecs = torch.linalg.eigh(self.dense())
        else:
            omega = torch.randn(self.n, m, generator=generator, device=self.d.device, dtype=self.d.dtype)
            q, _ = torch.linalg.qr(self.matvec(omega))
            for _ in range(iters):
                q, _ = torch.linalg.qr(self.matvec(q))
            t = q.T @ self.matvec(q)
            vals, u = torch.linalg.eigh(0.5 * (t + t.T))
            vecs = q @ u
        order = torch.argsort(vals, descending=True)[:k]
        return vals[order].clamp(min=0), vecs[:, order]


def _diagonal_top(d: Tensor, k: int, generator: torch.Generator | None, rtol: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs of diag(d) when the k-th largest variance may be shared by many coordinates.

    Uniform device noise gives every weight of a layer the same variance, so the top-k eigenspace is
    not k particular weights but any k-dimensional subspace of the tied coordinates. Picking the first
    k coordinates (what a plain top-k does) would perturb k arbitrary weights; a random orthonormal
    basis of the tied span is an equally exact eigenbasis and spreads the directions over all of them.
    """
    vals, order = torch.sort(d, descending=True)
    kth = vals[k - 1]
    tied = torch.isclose(d, kth, rtol=rtol, atol=0.0)
    above = order[:k][~tied[order[:k]]]
    r = k - len(above)
    vecs = torch.zeros(d.numel(), k, dtype=d.dtype, device=d.device)
    vecs[above, torch.arange(len(above), device=d.device)] = 1.0
    out_vals = torch.cat([d[above], kth.expand(r)])
    if r:
        span = torch.nonzero(tied).flatten()
        g = torch.randn(len(span), r, generator=generator, device=d.device, dtype=d.dtype)
        q, _ = torch.linalg.qr(g)
        vecs[span, len(above) :] = q
    return out_vals.clamp(min=0), vecs


def _profile_layer(noise, name: str, w: Tensor) -> LayerCovariance:
    """Factored covariance of a ProfileNoise layer: the decode of its per-device error statistics."""
    e = noise.device_errors(name, w)
    mu = (e.coef * e.mean).sum(-1).sum(0).reshape(-1) + noise.quantization_shift(w).expand_as(w).reshape(-1)
    B = None
    if e.spatial is not None:
        contrib = e.coef.unsqueeze(-1) * e.spatial  # (P, *shape, D, k): device a's row of A, times its coef
        tile = getattr(e, "tile", None)
        if tile is None or int(tile.max()) == 0:
            # one field over the layer: weight error = sum_{P,D} coef * (A z)[cell] -> B[w] = sum coef * A[cell]
            B = contrib.sum(-2).sum(0).reshape(w.numel(), e.spatial.shape[-1])
        else:
            B = _tiled_factor(contrib, tile, w.numel())
    d = ((e.coef**2) * e.sigma**2).sum(-1).sum(0).reshape(-1)
    return LayerCovariance(mu, B, d)


def _tiled_factor(contrib: Tensor, tile: Tensor, n: int) -> Tensor:
    """Sparse B (n, tiles * k) when every tile draws its own z_k: B[w, t*k + j] = sum of w's devices in t of c_j."""
    k = contrib.shape[-1]
    shape = contrib.shape[1:-2]
    weight = torch.arange(n, device=contrib.device).view(1, *shape, 1).expand_as(tile)
    j = torch.arange(k, device=contrib.device)
    rows = weight.unsqueeze(-1).expand(*tile.shape, k).reshape(-1)
    cols = (tile.unsqueeze(-1) * k + j).reshape(-1)
    size = (n, (int(tile.max()) + 1) * k)
    idx = torch.stack([rows, cols])
    return torch.sparse_coo_tensor(idx, contrib.reshape(-1), size, check_invariants=True).coalesce()


def layer_covariance(noise: WeightNoise, name: str, w: Tensor) -> LayerCovariance:
    """The factored covariance of ``noise`` for the (detached) weight ``w`` named ``name``."""
    w = w.detach()
    from models.noise.profile_noise import ProfileNoise

    if isinstance(noise, ProfileNoise):
        return _profile_layer(noise, name, w)
    if isinstance(noise, CensoredNoise):
        mean, std = noise.base.moments(w)
        shift = 0.0 if noise.recentre else censored_mean(noise.lam)
        mu = (mean + shift * std).expand_as(w).reshape(-1)
        d = noise.noise_std({name: w})[name].reshape(-1) ** 2
        return LayerCovariance(mu, None, d)
    if isinstance(noise, MomentNoise):
        mean, std = noise.moments(w)
        return LayerCovariance(mean.expand_as(w).reshape(-1), None, (std.expand_as(w) ** 2).reshape(-1))
    if isinstance(noise, LogNormalNoise):
        mu = (w * math.expm1(0.5 * noise.sigma**2)).reshape(-1)
    else:
        mu = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
    d = noise.noise_std({name: w})[name].reshape(-1) ** 2
    return LayerCovariance(mu, None, d)
