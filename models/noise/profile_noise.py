"""Weight noise from a calibration noise profile: per-device conductance errors decoded through a mapping.

A device with target conductance g is read as
    g + mu_prog(g) + dmu_relax(g, t) + sqrt(s_prog^2 + s_relax^2 + s_read^2) * z   (+ spatial term),
and with probabilities (p_lrs, p_hrs) it is stuck at the profile's stuck conductances (default: the
top / bottom level) instead. The low-rank
spatial covariance A A^T (A = V_k D_k^1/2, S^2) of the profile adds A z_k to the devices of each layer,
tiled over the array cells in device order: every physical tile (each block of rows*cols devices, the last
one partly filled) gets its own z_k, so devices of different tiles are independent and devices of one tile
keep the profile's covariance; the independent part keeps the per-device total variance
(s_prog^2 minus the spatial variance of the cell, floored at 0). Weight errors are the linear decode of
the device errors, so without stuck faults or spatial terms one Gaussian per weight is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from models.mapping import AnalogMapping, BitSlicedMapping, Scale, Sign
from models.noise.base import AffineSampler, WeightNoise, per_device_mask, rand, randn, randn_draws

_GRID = 1025  # tabulation points of the conductance-dependent laws for the analog mapping


def load_profile_any(profile: Any):
    """A NoiseProfile object as is, or loaded from a path."""
    if isinstance(profile, (str, Path)):
        from calibration.profile import load_profile

        return load_profile(profile)
    return profile


@dataclass
class _Tables:
    """Device-law tables over a conductance grid (bit-sliced: the 2^K used levels; analog: a fine grid)."""

    g: np.ndarray  # grid conductances (S)
    mean: np.ndarray  # total mean error (S)
    sigma: np.ndarray  # total independent sigma (S)
    mean_v: np.ndarray | None
    sigma_v: np.ndarray | None


@dataclass
class DeviceErrors:
    """Conductance-error statistics of every device of one layer, each (P, *weight_shape, D).

    The weight error is sum over P and D of ``coef * dg``; dg has mean ``mean`` and independent std
    ``sigma`` plus, with a spatial model, the correlated part ``spatial @ z_k[tile]`` (rows of A per device,
    shape (P, *weight_shape, D, k); ``tile`` the device's physical tile, (P, *weight_shape, D)): z_k is drawn
    independently per tile, so two devices covary by their rows' dot product only when they share a tile.
    Stuck-at faults are not included.
    """

    target: Tensor
    coef: Tensor
    mean: Tensor
    sigma: Tensor
    spatial: Tensor | None
    tile: Tensor | None = None


@dataclass
class ProfileNoise(WeightNoise):
    """Noise of a NoiseProfile ``t_s`` seconds after programming, through a bit-sliced or analog mapping."""

    profile: Any
    mapping: BitSlicedMapping | AnalogMapping
    t_s: float = 0.0
    read: bool = True
    stuck: bool = True
    spatial: bool = True
    quantize: bool = False
    verified_mask: dict[str, Tensor] | None = None  # per-weight (or per-device) booleans; None = none verified
    all_verified: bool = False
    factor: float = 1.0
    lognormal_exact: bool = True
    # Fractions of stuck-on (LRS) and stuck-off (HRS) devices to draw; None: the profile's. A deployment whose
    # placement knew the chip's defects draws only what its defect map did not catch (hil/deploy/readback.py).
    stuck_fractions: tuple[float, float] | None = None
    # False: only the read noise (a fresh read of a programmed chip: models.montecarlo redraws it per inference
    # batch on top of a chip drawn with read=False). True: the chip's programming, relaxation, stuck and spatial terms.
    programming: bool = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_profile(
        cls,
        profile: Any,
        t_s: float = 0.0,
        *,
        mapping: str = "bitsliced",
        bits: int = 8,
        sign: str = "separate",
        scale: str = "layer",
        **options: Any,
    ) -> ProfileNoise:
        """Bit-sliced mapping with K = profile.bits_per_device (M = ``bits``), or the analog pair mapping."""
        # sign and scale arrive as plain strings (CLI, noise specs); the mappings refuse bad ones in one line
        if mapping == "bitsliced":
            mp: BitSlicedMapping | AnalogMapping = BitSlicedMapping(
                bits, int(profile.bits_per_device), cast(Sign, sign), cast(Scale, scale)
            )
        elif mapping == "analog":
            mp = AnalogMapping(float(profile.g_min), float(profile.g_max), cast(Scale, scale))
        else:
            raise ValueError(f"unknown mapping {mapping!r} (bitsliced or analog)")
        if t_s < 0:
            raise ValueError(f"t_s must be >= 0 seconds after programming, got {t_s}")
        return cls(profile=profile, mapping=mp, t_s=float(t_s), **options)

    def __post_init__(self) -> None:
        self._tables = self._build_tables()
        self._spatial_A: np.ndarray | None = None
        sp = getattr(self.profile, "spatial", None)
        if self.spatial and self.programming and sp is not None:
            self._spatial_A = np.asarray(sp.eigvecs) * np.sqrt(np.clip(np.asarray(sp.eigvals), 0, None))

    def _bitsliced(self) -> BitSlicedMapping:
        """The bit-sliced mapping (the level and code tables exist only for it)."""
        if not isinstance(self.mapping, BitSlicedMapping):
            raise TypeError(f"this needs the bit-sliced mapping, not {type(self.mapping).__name__}")
        return self.mapping

    def used_levels(self) -> np.ndarray:
        """Conductances of the 2^K levels the bit-sliced mapping uses (evenly picked from levels_g)."""
        lv = np.asarray(self.profile.levels_g, dtype=np.float64)
        n = 2 ** int(self._bitsliced().bits_per_device)
        if lv.size == 0:
            lv = np.linspace(self.profile.g_min, self.profile.g_max, int(self.profile.n_levels))
        if lv.size < n:
            raise ValueError(f"profile has {lv.size} levels, the mapping needs {n}")
        return lv[np.round(np.linspace(0, lv.size - 1, n)).astype(int)]

    def _laws(self, g: np.ndarray, verified: bool) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (S) of each grid device's error: the profile's laws, read noise counted once."""
        p = self.profile
        if not self.programming:  # a fresh read alone
            return np.zeros_like(g), np.asarray(p.read_sigma(g), dtype=np.float64) if self.read else np.zeros_like(g)
        return p.device_error_moments(g, verified=verified, t_s=self.t_s, read=self.read)

    def _build_tables(self) -> _Tables:
        if isinstance(self.mapping, BitSlicedMapping):
            g = self.used_levels()
        else:
            g = np.linspace(self.mapping.g_min, self.mapping.g_max, _GRID)
        mean, sigma = self._laws(g, False)
        need_v = self.all_verified or self.verified_mask is not None
        mean_v, sigma_v = self._laws(g, True) if need_v else (None, None)
        return _Tables(g, mean, sigma, mean_v, sigma_v)

    @property
    def _is_lognormal(self) -> bool:
        return self.lognormal_exact and self.programming and getattr(self.profile, "family", None) == "lognormal"

    @property
    def _stuck(self) -> tuple[float, float]:
        if not (self.stuck and self.programming):
            return 0.0, 0.0
        lrs, hrs = self.profile.stuck_fractions if self.stuck_fractions is None else self.stuck_fractions
        f = min(self.factor, 1.0)
        return float(lrs) * f, float(hrs) * f

    # ------------------------------------------------------------------ layout of one layer
    def _layout(self, name: str, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(target g, coefficient C, grid index or None-as-empty, verified device mask), all (P, *shape, D).

        The weight error is sum over P and D of C * (g_read - g_target).
        """
        if isinstance(self.mapping, BitSlicedMapping):
            mp = self.mapping
            st = mp.to_devices(w)
            lv = st.levels.long()
            used = torch.as_tensor(self._tables.g, dtype=w.dtype, device=w.device)
            dg_level = (used[-1] - used[0]) / (mp.n_levels - 1)
            c = mp.device_weights(w) * st.step.unsqueeze(-1) / dg_level  # (*shape, D)
            if mp.sign == "separate":
                assert st.sign is not None  # the separate sign mode always decodes signs
                coef = (st.sign.unsqueeze(-1) * c).unsqueeze(0)
            else:
                coef = torch.stack([c.expand(lv.shape[1:]), -c.expand(lv.shape[1:])])
            g_t = used[lv]
            idx = lv
            d = mp.devices_per_weight
        else:
            mp2 = self.mapping
            st2 = mp2.to_conductances(w)
            g_t = st2.g.unsqueeze(-1)  # (2, *shape, 1)
            k = st2.scale / (mp2.g_max - mp2.g_min)
            coef = torch.stack([k.expand(w.shape), -k.expand(w.shape)]).unsqueeze(-1).to(w.dtype)
            pos = (g_t - mp2.g_min) / (mp2.g_max - mp2.g_min) * (_GRID - 1)
            idx = torch.clamp(torch.round(pos), 0, _GRID - 1).long()
            d = 1
        vmask = self._verified(name, w, d).unsqueeze(0).expand(g_t.shape)
        return g_t, coef, idx, vmask

    def _verified(self, name: str, w: Tensor, d: int) -> Tensor:
        if self.all_verified:
            return torch.ones((*w.shape, d), dtype=torch.bool, device=w.device)
        if self.verified_mask is None or name not in self.verified_mask:
            return torch.zeros((*w.shape, d), dtype=torch.bool, device=w.device)
        return per_device_mask(self.verified_mask[name], w, d, f"verified mask for {name!r}")

    def _device_moments(self, idx: Tensor, vmask: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        t = self._tables
        mean = torch.as_tensor(t.mean, dtype=like.dtype, device=like.device)[idx]
        sig = torch.as_tensor(t.sigma, dtype=like.dtype, device=like.device)[idx]
        if t.mean_v is not None:
            mean = torch.where(vmask, torch.as_tensor(t.mean_v, dtype=like.dtype, device=like.device)[idx], mean)
            sig = torch.where(vmask, torch.as_tensor(t.sigma_v, dtype=like.dtype, device=like.device)[idx], sig)
        if self.factor == 1.0:  # x * 1.0 is x: the gathers are already this call's own tensors
            return mean, sig
        return mean * self.factor, sig * self.factor

    def quantization_shift(self, w: Tensor) -> Tensor:
        """Q(W) - W when the weights are deployed M-bit quantised (``quantize``), else 0."""
        return (
            (self.mapping.quantize(w) - w)
            if (self.quantize and isinstance(self.mapping, BitSlicedMapping))
            else torch.zeros((), dtype=w.dtype, device=w.device)
        )

    # ------------------------------------------------------------------ sampling
    def _fast(self) -> bool:
        return self._stuck == (0.0, 0.0) and self._spatial_A is None and not self._is_lognormal

    def sample_batch(self, weights, n_draws, generator=None):
        out = {}
        for name, w in weights.items():
            wd = w.detach()
            out[name] = self._delta(name, wd, [generator], n_draws).add_(w + self.quantization_shift(wd))
        return out

    def sample(self, weights, generator=None):
        """One draw; on the per-device path the Monte Carlo sampler's, so draw i of Monte Carlo is
        ``sample(weights, draw_generator(seed, i))``."""
        grad = torch.is_grad_enabled() and any(w.requires_grad for w in weights.values())
        if self._fast() or generator is None or grad:
            return super().sample(weights, generator)
        return {k: v[0].clone() for k, v in self.draw_sampler(weights)([generator]).items()}

    def sample_draws(self, weights, generators):
        return self.draw_sampler(weights)(generators)

    def draw_sampler(self, weights):
        if not self._fast():  # stuck faults, spatial field or log-normal devices: the per-device sampler
            from models.noise.device_sampler import device_draw_sampler

            return device_draw_sampler(self, weights)
        shifts, stds = {}, {}
        for name, w in weights.items():
            wm, ws = self._weight_moments(name, w.detach())
            shifts[name], stds[name] = w + self.quantization_shift(w.detach()) + wm, ws

        return AffineSampler(shifts, stds)

    def _weight_moments(self, name: str, w: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of the weight error when it is one Gaussian per weight (no stuck/spatial/log-normal)."""
        if isinstance(self.mapping, BitSlicedMapping):
            mask = None if (self.all_verified or self.verified_mask is None) else self.verified_mask.get(name)
            if mask is None or mask.shape == w.shape:
                return self._code_weight_moments(w, mask)
        _, coef, idx, vmask = self._layout(name, w)
        mean, sig = self._device_moments(idx, vmask, w)
        return (coef * mean).sum(-1).sum(0), torch.sqrt(((coef * sig) ** 2).sum(-1).sum(0))

    def _randn(self, shape, like, gens, n):
        if n is not None:
            return randn((n, *shape), like, gens[0])
        return randn_draws(tuple(shape), like, gens)

    def _rand(self, shape, like, gens, n):
        if n is not None:
            return rand((n, *shape), like, gens[0])
        return torch.stack([rand(tuple(shape), like, g) for g in gens])

    def _code_moments(self, verified: bool, like: Tensor) -> tuple[Tensor, Tensor]:
        """Bit-sliced mapping: mean and variance of the weight error per M-bit magnitude code, in LSB units.

        Every weight with the same code has the same device levels, so a 2^M-entry table replaces the
        per-device work: the error is sign * mean[code] * step, its variance var[code] * step^2.
        """
        mp = self.mapping
        assert isinstance(mp, BitSlicedMapping)
        t = self._tables
        mean_t = torch.as_tensor(t.mean_v if verified else t.mean, dtype=like.dtype, device=like.device) * self.factor
        sig_t = torch.as_tensor(t.sigma_v if verified else t.sigma, dtype=like.dtype, device=like.device) * self.factor
        c = mp.device_weights(like) / ((t.g[-1] - t.g[0]) / (mp.n_levels - 1))  # LSBs per siemens, (D,)
        lv = mp.split(torch.arange(2**mp.bits, device=like.device))  # (2^M, D)
        mean = (c * mean_t[lv]).sum(-1)
        var = (c**2 * sig_t[lv] ** 2).sum(-1)
        if mp.sign == "differential":  # the other array of the pair sits at level 0
            mean = mean - (c * mean_t[0]).sum()
            var = var + (c**2 * sig_t[0] ** 2).sum()
        return mean, var

    def _code_weight_moments(self, w: Tensor, verified: Tensor | None) -> tuple[Tensor, Tensor]:
        mag, sign, step = self._bitsliced().codes(w)
        mean, var = self._code_moments(self.all_verified, w)
        wm, wv = mean[mag], var[mag]
        if verified is not None:
            mean_v, var_v = self._code_moments(True, w)
            m = verified.to(device=w.device, dtype=torch.bool)
            wm, wv = torch.where(m, mean_v[mag], wm), torch.where(m, var_v[mag], wv)
        return sign * step * wm, step * torch.sqrt(wv)

    def _delta(self, name: str, w: Tensor, gens: list, n: int | None) -> Tensor:
        if self._fast():
            wm, ws = self._weight_moments(name, w)
            return self._randn(tuple(w.shape), w, gens, n).mul_(ws).add_(wm)
        g_t, coef, idx, vmask = self._layout(name, w)
        mean, sig = self._device_moments(idx, vmask, w)
        spatial = None
        if self._spatial_A is not None:
            A = torch.as_tensor(self._spatial_A, dtype=w.dtype, device=w.device) * self.factor  # (cells, k)
            n_dev, cells = g_t.numel(), A.shape[0]
            cell = torch.arange(n_dev, device=w.device) % cells
            cell_var = (A**2).sum(1)[cell].view(g_t.shape)
            sig = torch.sqrt(torch.clamp(sig**2 - cell_var, min=0.0))
            # one field per physical tile: device i lies in tile i // cells, so the (n, tiles, cells) fields
            # flattened tile-major are the devices in order
            zk = self._randn((-(-n_dev // cells), A.shape[1]), w, gens, n)  # (n, tiles, k)
            spatial = (zk @ A.T).reshape(zk.shape[0], -1)[:, :n_dev].view(-1, *g_t.shape)
        z = self._randn(tuple(g_t.shape), w, gens, n)
        if self._is_lognormal:
            s = float(self.profile.family_params["s"]) * self.factor
            dg = g_t * torch.expm1(s * z)
            if self.read:
                rs = torch.as_tensor(
                    np.asarray(self.profile.read_sigma(self._tables.g)), dtype=w.dtype, device=w.device
                )[idx]
                dg = dg + rs * self.factor * self._randn(tuple(g_t.shape), w, gens, n)
        else:
            dg = mean + sig * z
        if spatial is not None:
            dg = dg + spatial
        lrs, hrs = self._stuck
        if lrs > 0 or hrs > 0:
            u = self._rand(tuple(g_t.shape), w, gens, n)
            g_hi, g_lo = getattr(
                self.profile, "stuck_conductances", (float(self._tables.g[-1]), float(self._tables.g[0]))
            )
            dg = torch.where(u < lrs, g_hi - g_t, dg)
            dg = torch.where((u >= lrs) & (u < lrs + hrs), g_lo - g_t, dg)
        return (coef * dg).sum(-1).sum(1)

    def device_errors(self, name: str, w: Tensor) -> DeviceErrors:
        """Per-device error statistics of the layer ``name`` with (detached) weights ``w``, stuck faults aside."""
        g_t, coef, idx, vmask = self._layout(name, w)
        mean, sig = self._device_moments(idx, vmask, w)
        if self._is_lognormal:
            s2 = (float(self.profile.family_params["s"]) * self.factor) ** 2
            mean = g_t * math.expm1(0.5 * s2)
            sig = g_t * math.exp(0.5 * s2) * math.sqrt(math.expm1(s2))
        spatial, tile = None, None
        if self._spatial_A is not None:
            A = torch.as_tensor(self._spatial_A, dtype=w.dtype, device=w.device) * self.factor  # (cells, k)
            i = torch.arange(g_t.numel(), device=w.device)
            cell = i % A.shape[0]
            sig = torch.sqrt(torch.clamp(sig**2 - (A**2).sum(1)[cell].view(g_t.shape), min=0.0))
            spatial = A[cell].view(*g_t.shape, A.shape[1])
            tile = (i // A.shape[0]).view(g_t.shape)
        return DeviceErrors(g_t, coef, mean, sig, spatial, tile)

    def noise_std(self, weights):
        out = {}
        for name, w in weights.items():
            wd = w.detach()
            e = self.device_errors(name, wd)
            g_t, coef, mean, sig = e.target, e.coef, e.mean, e.sigma
            sp_var = torch.zeros((), dtype=wd.dtype, device=wd.device)
            if e.spatial is not None and e.tile is not None:
                sp_var = _spatial_weight_variance(coef.unsqueeze(-1) * e.spatial, e.tile)
            lrs, hrs = self._stuck
            g_hi, g_lo = getattr(
                self.profile, "stuck_conductances", (float(self._tables.g[-1]), float(self._tables.g[0]))
            )
            p0 = 1 - lrs - hrs
            e1 = p0 * mean + lrs * (g_hi - g_t) + hrs * (g_lo - g_t)
            e2 = p0 * (sig**2 + mean**2) + lrs * (g_hi - g_t) ** 2 + hrs * (g_lo - g_t) ** 2
            var = torch.clamp(e2 - e1**2, min=0.0)
            out[name] = torch.sqrt(((coef**2) * var).sum(-1).sum(0) + p0 * sp_var)
        return out

    def scaled(self, factor):
        return replace(self, factor=self.factor * factor)

    def with_verified(self, mask: dict[str, Tensor] | None = None, all_verified: bool = False) -> ProfileNoise:
        """The same noise with some (mask) or all devices programmed with write-verify."""
        return replace(self, verified_mask=mask, all_verified=all_verified)

    def describe(self):
        raise TypeError("profile noise is described by its spec ({'family': 'profile', 'path': ...})")


def _spatial_weight_variance(contrib: Tensor, tile: Tensor) -> Tensor:
    """Variance of each weight's spatial error: sum over tile pairs of its devices' rows, (P, *shape, D, k) in.

    A weight's devices in one tile share that tile's z_k, devices in different tiles do not, so the
    variance is sum_{a, b same tile} c_a . c_b over the P * D devices a, b of the weight.
    """
    p, d, k = contrib.shape[0], contrib.shape[-2], contrib.shape[-1]
    shape = contrib.shape[1:-2]
    c = contrib.reshape(p, -1, d, k).permute(1, 0, 2, 3).reshape(-1, p * d, k)  # (weights, P*D, k)
    t = tile.reshape(p, -1, d).permute(1, 0, 2).reshape(-1, p * d)
    same = (t.unsqueeze(-1) == t.unsqueeze(-2)).to(c.dtype)
    return ((c @ c.transpose(-1, -2)) * same).sum((-1, -2)).reshape(shape)


_PROFILE_KEYS = {
    "path",
    "t_s",
    "mapping",
    "bits",
    "sign",
    "scale",
    "read",
    "stuck",
    "spatial",
    "quantize",
    "all_verified",
    "scale_factor",
}


def noise_from_profile_spec(spec: dict[str, Any]) -> ProfileNoise:
    """{"family": "profile", "path": "p.h5", "t_s": 0, "mapping": "bitsliced"|"analog", "bits": 8, ...}."""
    unknown = sorted(set(spec) - _PROFILE_KEYS - {"family"})
    if unknown:
        raise ValueError(f"noise family 'profile': unknown key(s) {', '.join(unknown)}")
    if "path" not in spec:
        raise ValueError("noise family 'profile' needs 'path' (the noise-profile .h5 file)")
    opts = {k: spec[k] for k in ("read", "stuck", "spatial", "quantize", "all_verified") if k in spec}
    noise = ProfileNoise.from_profile(
        load_profile_any(spec["path"]),
        float(spec.get("t_s", 0.0)),
        mapping=spec.get("mapping", "bitsliced"),
        bits=int(spec.get("bits", 8)),
        sign=spec.get("sign", "separate"),
        scale=spec.get("scale", "layer"),
        **opts,
    )
    return noise.scaled(float(spec["scale_factor"])) if "scale_factor" in spec else noise
