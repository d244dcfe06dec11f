"""Per-layer weight-noise covariance in factored form (mu, B, d): Sigma = B B^T + diag(d), for DAT.

Built from the run's noise model: the profile's spatial model (cells of the array, tiled over the
devices of a layer in device order, as ``ProfileNoise`` samples it) gives B; the independent
per-device / per-level part gives d. Families without correlations have B = None (diagonal).
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
    """Mean mu (n,), optional low-rank factor B (n, r) and diagonal d (n,) of one layer's weight error."""

    mu: Tensor
    B: Tensor | None
    d: Tensor

    @property
    def n(self) -> int:
        return int(self.d.numel())

    def dense(self) -> Tensor:
        """The n x n covariance (tests and tiny layers only)."""
        cov = torch.diag(self.d)
        if self.B is not None:
            cov = cov + self.B @ self.B.T
        return cov

    def matvec(self, v: Tensor) -> Tensor:
        """Sigma @ v for v of shape (n, m) without forming Sigma."""
        out = self.d[:, None] * v
        if self.B is not None:
            out = out + self.B @ (self.B.T @ v)
        return out

    def sample(self, generator: torch.Generator | None) -> Tensor:
        """One exact draw from N(mu, Sigma) (DAT-Full's sampler): mu + B z_r + sqrt(d) z_n."""
        z = torch.randn(self.n, generator=generator, device=self.d.device, dtype=self.d.dtype)
        eta = self.mu + self.d.clamp(min=0).sqrt() * z
        if self.B is not None:
            zr = torch.randn(self.B.shape[1], generator=generator, device=self.d.device, dtype=self.d.dtype)
            eta = eta + self.B @ zr
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
        # weight error = sum_{P,D} coef * (A z)[cell]  ->  B[w, :] = sum_{P,D} coef * A[cell, :]
        B = (e.coef.unsqueeze(-1) * e.spatial).sum(-2).sum(0).reshape(w.numel(), e.spatial.shape[-1])
    d = ((e.coef**2) * e.sigma**2).sum(-1).sum(0).reshape(-1)
    return LayerCovariance(mu, B, d)


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
