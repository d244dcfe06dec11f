"""Weight-to-device mappings: bit-sliced multi-level devices (NeFT IV-A, eq. 12-15) and direct analog pairs.

Both mappings are exactly invertible for noise-free devices (the bit-sliced one up to M-bit
quantisation), and their inverses are linear in the device values, so device errors turn into
weight errors by the same formula that decodes the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Sign = Literal["separate", "differential"]
Scale = Literal["layer", "column"]


def _max_abs(w: Tensor, per: Scale) -> Tensor:
    """max|W| per layer (scalar) or per output channel (dim 0, broadcastable to ``w``)."""
    a = w.detach().abs()
    if per == "layer" or w.dim() < 2:
        return a.amax()
    return a.reshape(w.shape[0], -1).amax(dim=1).reshape((w.shape[0],) + (1,) * (w.dim() - 1))


@dataclass
class DeviceState:
    """Per-device values of one layer: ``levels`` is (P, *weight_shape, D).

    P = 1 with ``sign`` (+-1 per weight) for the "separate" sign mode, P = 2 (positive array, negative
    array) for "differential". D = M/K devices per weight, least-significant device first. Levels are
    floats so that noisy (non-integer) device values decode too.
    """

    levels: Tensor
    sign: Tensor | None
    step: Tensor  # weight value of one least-significant level (broadcastable to the weights)
    weight_ndim: int  # number of weight dimensions (levels has P before and D after them)


@dataclass(frozen=True)
class BitSlicedMapping:
    """M-bit quantised weights split over M/K devices of K bits each, sign kept separately or differentially.

    W_d = step * sum_i m_i 2^i with step = max|W| / (2^M - 1)  (eq. 12); device j holds
    g_j = sum_{i<K} m_{jK+i} 2^i  (eq. 13); a device error dg_j adds step * dg_j * 2^{jK} (eq. 15).
    """

    bits: int = 8
    bits_per_device: int = 2
    sign: Sign = "separate"
    scale: Scale = "layer"

    def __post_init__(self) -> None:
        if self.bits < 1 or self.bits_per_device < 1 or self.bits % self.bits_per_device:
            raise ValueError(
                f"bits ({self.bits}) must be a positive multiple of bits_per_device ({self.bits_per_device})"
            )
        if self.sign not in ("separate", "differential"):
            raise ValueError(f"sign must be 'separate' or 'differential', not {self.sign!r}")
        if self.scale not in ("layer", "column"):
            raise ValueError(f"scale must be 'layer' or 'column', not {self.scale!r}")

    @property
    def devices_per_weight(self) -> int:
        """D = M / K."""
        return self.bits // self.bits_per_device

    @property
    def n_levels(self) -> int:
        """Levels per device, 2^K."""
        return 2**self.bits_per_device

    @property
    def arrays(self) -> int:
        """P: 1 array (sign separate) or 2 arrays (differential pair)."""
        return 1 if self.sign == "separate" else 2

    def device_weights(self, like: Tensor) -> Tensor:
        """Significance 2^{jK} of device j, shape (D,)."""
        j = torch.arange(self.devices_per_weight, device=like.device)
        return (2.0 ** (j * self.bits_per_device)).to(like.dtype)

    def step(self, w: Tensor) -> Tensor:
        """Weight value of one LSB: max|W| / (2^M - 1) per layer or per output channel (never 0)."""
        m = _max_abs(w, self.scale)
        m = torch.where(m > 0, m, torch.ones_like(m))
        return m / (2**self.bits - 1)

    def codes(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Integer magnitudes 0..2^M-1 (int64), sign (+-1) and step of the quantised weights."""
        step = self.step(w)
        mag = torch.clamp(torch.round(w.detach().abs() / step), 0, 2**self.bits - 1).to(torch.int64)
        sign = torch.where(w.detach() < 0, -1.0, 1.0).to(w.dtype)
        return mag, sign, step

    def quantize(self, w: Tensor) -> Tensor:
        """The M-bit quantised weights W_d (eq. 12), detached."""
        mag, sign, step = self.codes(w)
        return sign * mag.to(w.dtype) * step

    def split(self, mag: Tensor) -> Tensor:
        """Device levels (eq. 13) of integer magnitudes: shape (*mag.shape, D), LSB device first."""
        k = self.bits_per_device
        shifts = torch.arange(self.devices_per_weight, device=mag.device) * k
        return (mag.unsqueeze(-1) >> shifts) & (2**k - 1)

    def to_devices(self, w: Tensor) -> DeviceState:
        """Target device levels of a weight tensor."""
        mag, sign, step = self.codes(w)
        lv = self.split(mag).to(w.dtype)
        if self.sign == "separate":
            return DeviceState(levels=lv.unsqueeze(0), sign=sign, step=step, weight_ndim=w.dim())
        pos = torch.where((sign > 0).unsqueeze(-1), lv, torch.zeros_like(lv))
        neg = torch.where((sign < 0).unsqueeze(-1), lv, torch.zeros_like(lv))
        return DeviceState(levels=torch.stack([pos, neg]), sign=None, step=step, weight_ndim=w.dim())

    def from_devices(self, state: DeviceState) -> Tensor:
        """Decode (possibly noisy, optionally batched over leading dims) device levels into weights (eq. 15)."""
        lv = state.levels
        mag = (lv * self.device_weights(lv)).sum(-1)  # (..., P, *shape)
        p_axis = -(state.weight_ndim + 1)
        if self.sign == "separate":
            assert state.sign is not None  # to_devices keeps the signs in the "separate" mode
            return state.sign * mag.select(p_axis, 0) * state.step
        return (mag.select(p_axis, 0) - mag.select(p_axis, 1)) * state.step


@dataclass
class AnalogState:
    """One conductance pair per weight: ``g`` is (2, *weight_shape) = (G+, G-), ``scale`` broadcastable."""

    g: Tensor
    scale: Tensor
    weight_ndim: int


@dataclass(frozen=True)
class AnalogMapping:
    """Direct analog mapping: W = scale * (G+ - G-) / (g_max - g_min), one of the pair at g_min.

    ``scale`` is max|W| per layer or per output column (a crossbar column holds one output channel).
    """

    g_min: float
    g_max: float
    scale: Scale = "layer"

    def __post_init__(self) -> None:
        if not self.g_max > self.g_min >= 0:
            raise ValueError(f"need 0 <= g_min < g_max, got g_min={self.g_min}, g_max={self.g_max}")
        if self.scale not in ("layer", "column"):
            raise ValueError(f"scale must be 'layer' or 'column', not {self.scale!r}")

    def w_scale(self, w: Tensor) -> Tensor:
        """max|W| per layer or per output channel (1 where the weights are all zero)."""
        m = _max_abs(w, self.scale)
        return torch.where(m > 0, m, torch.ones_like(m))

    def to_conductances(self, w: Tensor) -> AnalogState:
        """Target conductance pair of every weight."""
        wd = w.detach()
        scale = self.w_scale(wd)
        span = self.g_max - self.g_min
        g_pos = self.g_min + torch.clamp(wd, min=0) / scale * span
        g_neg = self.g_min + torch.clamp(-wd, min=0) / scale * span
        return AnalogState(g=torch.stack([g_pos, g_neg]), scale=scale, weight_ndim=w.dim())

    def from_conductances(self, state: AnalogState) -> Tensor:
        """Decode (possibly noisy, optionally batched over leading dims) conductance pairs into weights."""
        p_axis = -(state.weight_ndim + 1)
        diff = state.g.select(p_axis, 0) - state.g.select(p_axis, 1)
        return diff / (self.g_max - self.g_min) * state.scale
