"""The paper noise families, parametrised directly (NeFT, MTRD, TRICE, write-verify-bounded)."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from models.mapping import BitSlicedMapping
from models.noise.base import (
    AffineSampler,
    DrawBuffers,
    WeightNoise,
    map_draws,
    per_device_mask,
    rand,
    randn,
    randn_draws,
)

# NeFT IV-F, eq. 16: the state-dependent device models, by their inner-state factor t (RRAM1 is uniform).
STATE_DEPENDENT_T: dict[str, float] = {"RRAM1": 1.0, "RRAM2": 4.0, "FeFET1": 2.0, "FeFET2": 6.0}

# How sigma_d is read. "range" (the default): a fraction of one device's full conductance range, i.e. of its
# 2^K - 1 level steps, as in the NeFT authors' code (std 0.778 * sigma_d * max|W| for 8-bit weights on 2-bit
# devices). "level": NeFT eq. 14-15 taken literally, sigma_d in units of one level step (1/3 of the above at K=2).
SIGMA_CONVENTIONS = ("range", "level")

# How a state-dependent model applies t. "weight" (the default, the authors' code): a weight whose |W|/max|W|
# lies strictly inside MID_BAND gets t times the noise of the others, and sigma_d is divided by
# sqrt(f t^2 + 1 - f) so that a layer with a fraction f of such weights keeps the uniform model's mean
# noise power. "level": eq. 16 per device, t at the inner levels of every device, not renormalised.
STATE_MODES = ("weight", "level")
MID_BAND = (0.25, 0.75)  # ~ the most significant device at an inner level (1 or 2 of a 2-bit device)
# The mid-band fraction f the authors' renormalisation assumes (a constant, not measured per layer).
AUTHORS_MID_FRACTION = 0.4


def state_t(model: str) -> float:
    """The inner-state factor t of a NeFT device model (RRAM1 1, RRAM2 4, FeFET1 2, FeFET2 6), case-insensitive."""
    key = {k.lower(): k for k in STATE_DEPENDENT_T}.get(model.lower())
    if key is None:
        raise ValueError(f"unknown state-dependent device model {model!r} (known: {', '.join(STATE_DEPENDENT_T)})")
    return STATE_DEPENDENT_T[key]


def level_factors(model: str, n_levels: int) -> tuple[float, ...]:
    """Per-level sigma multipliers of a NeFT device model (1 at the two end levels, t in between)."""
    t = state_t(model)
    return tuple(1.0 if lv in (0, n_levels - 1) else t for lv in range(n_levels))


def renormalisation(t: float, mid_fraction: float) -> float:
    """1 / sqrt(f t^2 + 1 - f): the sigma_d multiplier that keeps the mean noise power when a fraction f gets t."""
    return 1.0 / math.sqrt(mid_fraction * t * t + 1.0 - mid_fraction)


def _group_mean(x: Tensor, scale: str) -> Tensor:
    """Mean over the layer (scalar) or over each output channel (dim 0, broadcastable), as the mapping scales."""
    if scale == "layer" or x.dim() < 2:
        return x.mean()
    return x.reshape(x.shape[0], -1).mean(1).reshape((x.shape[0],) + (1,) * (x.dim() - 1))


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
    """NeFT eq. 14-15: every device of the bit-sliced mapping gets N(0, s^2) level steps, s = sigma_d * u * f.

    u is the number of level steps one sigma_d stands for: 2^K - 1 with ``convention="range"`` (sigma_d is a
    fraction of a device's full conductance range, the NeFT authors' code and a profile's ``gaussian`` family
    with g_min = 0), 1 with ``convention="level"`` (eq. 15 literally). f is the state-dependent factor
    (NeFT IV-F): 1 without a model; with ``mid_factor`` = t the authors' per-weight factor (t on weights with
    |W|/max|W| in MID_BAND, 1 elsewhere) renormalised by 1/sqrt(f t^2 + 1 - f), f = ``mid_fraction`` (0.4 as in
    the authors' code; None: the layer's own fraction, so its mean noise power equals the uniform model's);
    with ``factors`` a multiplier per device level (eq. 16 per device, not renormalised). The sum over devices
    of independent Gaussians is Gaussian, so one draw per weight with std = step * sqrt(sum_j (2^{jK} s_j)^2)
    is exact. With ``quantize`` the draw is centred on the M-bit quantised weight (straight-through gradient).
    """

    sigma: float
    mapping: BitSlicedMapping = field(default_factory=BitSlicedMapping)
    factors: tuple[float, ...] | None = None  # per-level multipliers (state "level")
    quantize: bool = False
    model: str | None = None  # name of the state-dependent model, for describe()
    convention: str = "range"
    mid_factor: float | None = None  # t of the per-weight state-dependent model (state "weight")
    mid_fraction: float | None = AUTHORS_MID_FRACTION  # f of its renormalisation; None: measured per layer

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.convention not in SIGMA_CONVENTIONS:
            raise ValueError(
                f"unknown sigma convention {self.convention!r}: 'range' (sigma_d is a fraction of a device's full "
                "range, the default) or 'level' (NeFT eq. 15, sigma_d in level steps)"
            )
        if self.factors is not None and len(self.factors) != self.mapping.n_levels:
            raise ValueError(f"need {self.mapping.n_levels} level factors, got {len(self.factors)}")
        if self.factors is not None and self.mid_factor is not None:
            raise ValueError("give per-level factors or a per-weight mid_factor, not both")
        if self.mid_factor is not None and self.mid_factor < 0:
            raise ValueError(f"mid_factor (t) must be >= 0, got {self.mid_factor}")
        if self.mid_fraction is not None and not 0.0 <= self.mid_fraction <= 1.0:
            raise ValueError(f"mid_fraction must be in [0, 1] (or None: measured per layer), got {self.mid_fraction}")

    @property
    def level_steps(self) -> float:
        """Level steps per unit of sigma_d: 2^K - 1 (full-range convention) or 1 (eq. 15 level convention)."""
        return float(self.mapping.n_levels - 1) if self.convention == "range" else 1.0

    @property
    def state(self) -> str | None:
        """How the state-dependent factor is applied: "weight", "level", or None for uniform noise."""
        if self.mid_factor is not None:
            return "weight"
        return "level" if self.factors is not None else None

    def weight_factor(self, w: Tensor) -> Tensor:
        """The per-weight sigma multiplier of the authors' state-dependent model (1 without one), broadcastable."""
        if self.mid_factor is None:
            return torch.ones((), dtype=w.dtype, device=w.device)
        t = self.mid_factor
        step = self.mapping.step(w)
        r = w.detach().abs() / (step * (2**self.mapping.bits - 1))
        lo, hi = MID_BAND
        mid = ((r > lo) & (r < hi)).to(w.dtype)
        if self.mid_fraction is None:
            f = _group_mean(mid, self.mapping.scale)
            norm = torch.rsqrt(f * t * t + 1.0 - f)
        else:
            norm = torch.tensor(renormalisation(t, self.mid_fraction), dtype=w.dtype, device=w.device)
        return (1.0 + (t - 1.0) * mid) * norm

    def device_sigma(self, levels: Tensor, w: Tensor | None = None) -> Tensor:
        """Sigma (level steps) of every device, (P, *weight_shape, D), given its target level and the weights."""
        base = self.sigma * self.level_steps
        if self.factors is not None:
            f = torch.tensor(self.factors, dtype=levels.dtype, device=levels.device)
            return base * f[levels.long()]
        if self.mid_factor is not None:
            if w is None:
                raise ValueError("the per-weight state-dependent model needs the weights to give device sigmas")
            return (base * self.weight_factor(w).unsqueeze(-1)).expand_as(levels)
        return torch.full_like(levels, base)

    def moments(self, w):
        mean = (self.mapping.quantize(w) - w) if self.quantize else torch.zeros((), dtype=w.dtype, device=w.device)
        if self.factors is None:
            # Same sigma on every device of a weight: var = s^2 * P * sum_j 4^{jK} (no level split needed).
            c2 = (self.mapping.device_weights(w) ** 2).sum() * self.mapping.arrays
            s = self.sigma * self.level_steps * self.weight_factor(w)
            return mean, (s * torch.sqrt(c2) * self.mapping.step(w)).expand_as(w)
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
        d["convention"] = self.convention
        if self.model:
            d["model"] = self.model
            d["state"] = self.state or "weight"
            if self.state == "weight":
                d["mid_fraction"] = self.mid_fraction
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

    def draw_sampler(self, weights):
        """Monte Carlo draws filled in place per draw (worker threads on CPU) into reused buffers: the numbers of
        ``sample`` with each draw's generator (w * exp(sigma z), z from that generator), without its copies."""
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights.values()):
            return super().draw_sampler(weights)
        return _LogNormalSampler(self.sigma, {n: w.detach() for n, w in weights.items()})

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
            sig = self.device.device_sigma(st.levels, wd)  # (P, *shape, D)
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
            sig = self.device.device_sigma(st.levels, wd)
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


class _LogNormalSampler:
    """Draws of `LogNormalNoise` for fixed weights: each draw's row is z, then exp(sigma z), then times w, in place."""

    def __init__(self, sigma: float, weights: dict[str, Tensor]) -> None:
        self.sigma = sigma
        self.weights = weights
        self._buffers = DrawBuffers()

    def __call__(self, generators: list[torch.Generator]) -> dict[str, Tensor]:
        n = len(generators)
        out = {name: self._buffers.get(name, w, n) for name, w in self.weights.items()}

        def fill(i: int) -> None:
            for name, w in self.weights.items():
                row = out[name][i]
                row.normal_(generator=generators[i]).mul_(self.sigma).exp_().mul_(w)

        map_draws(fill, n, sum(w.numel() for w in self.weights.values()), self.weights.values())
        return out
