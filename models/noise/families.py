"""The paper noise families, parametrised directly (NeFT, MTRD, TRICE, write-verify-bounded)."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from models.mapping import BitSlicedMapping
from models.noise.base import AffineSampler, WeightNoise, per_device_mask, rand, randn, randn_draws

# NeFT IV-F, eq. 16: relative sigma per device level (levels 0..3 of a 2-bit device); the end levels
# keep sigma_d, the middle levels get t * sigma_d.
STATE_DEPENDENT_T: dict[str, float] = {"RRAM1": 1.0, "RRAM2": 4.0, "FeFET1": 2.0, "FeFET2": 6.0}


def level_factors(model: str, n_levels: int) -> tuple[float, ...]:
    """Per-level sigma multipliers of a NeFT device model (1 at the two end levels, t in between)."""
    key = {k.lower(): k for k in STATE_DEPENDENT_T}.get(model.lower())
    if key is None:
        raise ValueError(f"unknown state-dependent device model {model!r} (known: {', '.join(STATE_DEPENDENT_T)})")
    t = STATE_DEPENDENT_T[key]
    return tuple(1.0 if lv in (0, n_levels - 1) else t for lv in range(n_levels))


class MomentNoise(WeightNoise):
    """Noise whose draw is ``W + mean(W) + std(W) * Z`` with Z i.i.d. standard normal per weight."""

    @abc.abstractmethod
    def moments(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Per-weight mean shift and std of the perturbation, computed from the detached weights."""

    @abc.abstractmethod
    def scaled(self, factor: float) -> MomentNoise:
        """The same Gaussian family with its magnitude multiplied by ``factor`` (still a MomentNoise)."""

    def standard(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
        """The standardised per-weight variable Z (Gaussian here; censored in subclasses)."""
        return randn(shape, like, generator)

    def sample_batch(self, weights, n_draws, generator=None):
        out = {}
        for name, w in weights.items():
            mean, std = self.moments(w.detach())
            z = self.standard((n_draws, *w.shape), w, generator)
            out[name] = w + mean + std * z
        return out

    def sample_draws(self, weights, generators):
        return self.draw_sampler(weights)(generators)

    def draw_sampler(self, weights):
        shifts, stds = {}, {}
        for name, w in weights.items():
            mean, std = self.moments(w.detach())
            shifts[name], stds[name] = w + mean, std
        if type(self).standard is MomentNoise.standard:
            return AffineSampler(shifts, stds)

        def draws(generators):
            return {
                n: torch.stack([self.standard(tuple(s.shape), s, g) for g in generators]) * stds[n] + s
                for n, s in shifts.items()
            }

        return draws

    def noise_std(self, weights):
        return {n: self.moments(w.detach())[1].expand_as(w) for n, w in weights.items()}


@dataclass
class DeviceGaussianNoise(MomentNoise):
    """NeFT eq. 14-15: each device of the bit-sliced mapping gets N(0, (sigma_d * f[level])^2) level units.

    ``factors`` gives the state-dependent multiplier per device level (NeFT IV-F; all ones = uniform).
    The sum over devices of independent Gaussians is Gaussian, so one draw per weight with
    std = step * sqrt(sum_j (2^{jK} sigma_j)^2) is exact. With ``quantize`` the draw is centred on the
    M-bit quantised weight (straight-through gradient), as deployed on the chip.
    """

    sigma: float
    mapping: BitSlicedMapping = field(default_factory=BitSlicedMapping)
    factors: tuple[float, ...] | None = None
    quantize: bool = False
    model: str | None = None  # name of the state-dependent model, for describe()

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.factors is not None and len(self.factors) != self.mapping.n_levels:
            raise ValueError(f"need {self.mapping.n_levels} level factors, got {len(self.factors)}")

    def device_sigma(self, levels: Tensor) -> Tensor:
        """Sigma (level units) of every device given its integer target level."""
        if self.factors is None:
            return torch.full_like(levels, self.sigma)
        f = torch.tensor(self.factors, dtype=levels.dtype, device=levels.device)
        return self.sigma * f[levels.long()]

    def moments(self, w):
        mean = (self.mapping.quantize(w) - w) if self.quantize else torch.zeros((), dtype=w.dtype, device=w.device)
        if self.factors is None:
            # Uniform sigma: var = sigma^2 * P * sum_j 4^{jK}, the same for every weight (no level split needed).
            c2 = (self.mapping.device_weights(w) ** 2).sum() * self.mapping.arrays
            return mean, (self.sigma * torch.sqrt(c2) * self.mapping.step(w)).expand_as(w)
        st = self.mapping.to_devices(w)
        c = self.mapping.device_weights(w)
        var = ((self.device_sigma(st.levels) * c) ** 2).sum(-1).sum(0)
        return mean, torch.sqrt(var) * st.step

    @property
    def magnitude(self):
        return self.sigma

    def scaled(self, factor):
        return replace(self, sigma=self.sigma * factor)

    def describe(self):
        d: dict[str, Any] = {"family": "state_dependent" if self.model else "gaussian", "sigma": self.sigma}
        if self.model:
            d["model"] = self.model
        d.update(_mapping_spec(self.mapping))
        d["quantize"] = self.quantize
        return d


@dataclass
class LogNormalNoise(WeightNoise):
    """MTRD multiplicative noise: W * exp(v), v ~ N(0, s^2) i.i.d. per weight."""

    sigma: float

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError(f"log-normal sigma must be >= 0, got {self.sigma}")

    def sample_batch(self, weights, n_draws, generator=None):
        return {n: w * torch.exp(self.sigma * randn((n_draws, *w.shape), w, generator)) for n, w in weights.items()}

    def noise_std(self, weights):
        s2 = self.sigma**2
        k = math.sqrt((math.exp(s2) - 1.0) * math.exp(s2))
        return {n: w.detach().abs() * k for n, w in weights.items()}

    @property
    def magnitude(self):
        return self.sigma

    def scaled(self, factor):
        return LogNormalNoise(self.sigma * factor)

    def describe(self):
        return {"family": "lognormal", "sigma": self.sigma}


@dataclass
class AdditiveNoise(MomentNoise):
    """MTRD additive noise: W + N(0, (eta * max|W|)^2), max over the layer (or per output channel)."""

    eta: float
    per_channel: bool = False

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"additive eta must be >= 0, got {self.eta}")

    def moments(self, w):
        if self.per_channel and w.dim() >= 2:
            m = w.abs().reshape(w.shape[0], -1).amax(1).reshape((w.shape[0],) + (1,) * (w.dim() - 1))
        else:
            m = w.abs().amax()
        return torch.zeros((), dtype=w.dtype, device=w.device), (self.eta * m).expand_as(w)

    @property
    def magnitude(self):
        return self.eta

    def scaled(self, factor):
        return replace(self, eta=self.eta * factor)

    def describe(self):
        return {"family": "additive", "eta": self.eta, "per_channel": self.per_channel}


def censored_mean(lam: float) -> float:
    """E[min(Z, lam)] for Z ~ N(0, 1): -phi(lam) + lam * (1 - Phi(lam)) (<= 0)."""
    phi = math.exp(-0.5 * lam * lam) / math.sqrt(2 * math.pi)
    tail = 0.5 * math.erfc(lam / math.sqrt(2))
    return -phi + lam * tail


def censored_var(lam: float) -> float:
    """Var[min(Z, lam)] for Z ~ N(0, 1)."""
    phi = math.exp(-0.5 * lam * lam) / math.sqrt(2 * math.pi)
    cdf = 1 - 0.5 * math.erfc(lam / math.sqrt(2))
    tail = 1 - cdf
    second = (cdf - lam * phi) + lam * lam * tail  # E[Z^2; Z<lam] + lam^2 P(Z>=lam)
    return second - censored_mean(lam) ** 2


@dataclass
class CensoredNoise(WeightNoise):
    """TRICE: a per-weight Gaussian noise with its right tail censored, Z -> min(Z, lam) in std units.

    Samples above lam * sigma are clamped to lam * sigma; with ``recentre`` the censored mean
    E[min(Z, lam)] * sigma is subtracted so the perturbation is zero-mean again.
    """

    base: MomentNoise
    lam: float
    recentre: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.base, MomentNoise):
            raise ValueError("censored noise needs a Gaussian base (gaussian, state_dependent or additive)")

    def sample_batch(self, weights, n_draws, generator=None):
        shift = censored_mean(self.lam) if self.recentre else 0.0
        out = {}
        for name, w in weights.items():
            mean, std = self.base.moments(w.detach())
            z = torch.clamp(randn((n_draws, *w.shape), w, generator), max=self.lam) - shift
            out[name] = w + mean + std * z
        return out

    def sample_draws(self, weights, generators):
        shift = censored_mean(self.lam) if self.recentre else 0.0
        out = {}
        for name, w in weights.items():
            mean, std = self.base.moments(w.detach())
            z = randn_draws(tuple(w.shape), w, generators).clamp_(max=self.lam).sub_(shift).mul_(std)
            out[name] = z.add_(w + mean)
        return out

    def noise_std(self, weights):
        k = math.sqrt(censored_var(self.lam))
        return {n: s * k for n, s in self.base.noise_std(weights).items()}

    @property
    def magnitude(self):
        return self.base.magnitude

    def scaled(self, factor):
        return replace(self, base=self.base.scaled(factor))

    def describe(self):
        return {"family": "censored", "lam": self.lam, "recentre": self.recentre, "base": self.base.describe()}


def truncated_normal(shape, like: Tensor, sigma: Tensor, bound: float, generator) -> Tensor:
    """N(0, sigma^2) conditioned on |x| <= bound, by inverse-CDF sampling (sigma broadcastable to shape)."""
    a = bound / torch.clamp(sigma, min=torch.finfo(like.dtype).tiny)
    lo = torch.special.ndtr(-a)
    u = lo + rand(shape, like, generator) * (1 - 2 * lo)
    z = torch.special.ndtri(torch.clamp(u, min=1e-12, max=1 - 1e-12))
    return torch.clamp(sigma * z, -bound, bound)


@dataclass
class WriteVerifyNoise(WeightNoise):
    """Device Gaussian noise where verified devices are re-programmed until |dg| <= threshold.

    A verified device's error is its Gaussian conditioned on the bound (truncated normal); unverified
    devices keep the plain Gaussian. ``mask`` maps weight names to booleans shaped like the weight
    (every device of the weight verified) or like (*weight_shape, D) (per device); a missing name or
    ``mask=None`` means all devices are verified. SWIM supplies the mask.
    """

    device: DeviceGaussianNoise
    threshold: float
    mask: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"write-verify threshold must be > 0, got {self.threshold}")

    def _device_mask(self, name: str, w: Tensor) -> Tensor:
        d = self.device.mapping.devices_per_weight
        if self.mask is None or name not in self.mask:
            return torch.ones((*w.shape, d), dtype=torch.bool, device=w.device)
        return per_device_mask(self.mask[name], w, d, f"write-verify mask for {name!r}")

    def sample_batch(self, weights, n_draws, generator=None):
        mp = self.device.mapping
        out = {}
        for name, w in weights.items():
            wd = w.detach()
            st = mp.to_devices(wd)
            sig = self.device.device_sigma(st.levels)  # (P, *shape, D)
            vmask = self._device_mask(name, wd).unsqueeze(0)  # (1, *shape, D)
            shape = (n_draws, *st.levels.shape)
            g = randn(shape, wd, generator) * sig
            tn = truncated_normal(shape, wd, sig, self.threshold, generator)
            dg = torch.where(vmask, tn, g)
            dw = (dg * mp.device_weights(wd)).sum(-1)  # (n, P, *shape)
            p_axis = 1
            if mp.sign == "separate":
                assert st.sign is not None  # the separate sign mode always decodes signs
                delta = st.sign * dw.select(p_axis, 0) * st.step
            else:
                delta = (dw.select(p_axis, 0) - dw.select(p_axis, 1)) * st.step
            mean = (mp.quantize(wd) - wd) if self.device.quantize else 0.0
            out[name] = w + mean + delta
        return out

    def noise_std(self, weights):
        mp = self.device.mapping
        out = {}
        for name, w in weights.items():
            wd = w.detach()
            st = mp.to_devices(wd)
            sig = self.device.device_sigma(st.levels)
            a = self.threshold / torch.clamp(sig, min=1e-30)
            phi = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
            z = 2 * torch.special.ndtr(a) - 1
            tvar = sig**2 * (1 - 2 * a * phi / torch.clamp(z, min=1e-30))
            var = torch.where(self._device_mask(name, wd).unsqueeze(0), tvar, sig**2)
            out[name] = torch.sqrt(((var * mp.device_weights(wd) ** 2).sum(-1)).sum(0)) * st.step
        return out

    @property
    def magnitude(self):
        return self.device.magnitude

    def scaled(self, factor):
        return replace(self, device=self.device.scaled(factor))

    def describe(self):
        if self.mask is not None:
            raise TypeError("write-verify noise with a per-weight mask has no serialisable spec")
        return {"family": "write_verify", "threshold": self.threshold, "base": self.device.describe()}


def _mapping_spec(m: BitSlicedMapping) -> dict[str, Any]:
    return {"bits": m.bits, "bits_per_device": m.bits_per_device, "sign": m.sign, "scale": m.scale}
