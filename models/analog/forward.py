"""The analog tile MVM of one Conv/Linear layer, for one weight draw or many folded into the channel axis.

Per layer, with input range alpha and the weight split into tiles t of at most ``tile_rows`` crossbar rows::

    x_q = DAC(clip(x, -alpha, alpha) / alpha)
    z_t = W_t/gamma_t @ x_q[t] - IR drop + N(0, out_noise^2 + w_noise^2 * sum_j |W_t/gamma_t|_ij x_q,j^2)
    y   = alpha * sum_t gamma_t * c_t * ADC(clip(z_t, -out_bound, out_bound)) + bias

gamma_t is the digital output scale of tile t (max |W| of each of its columns, from the programmed clean
weights), c_t the drift-compensation factor (1 when off), and each tile's partial output is digitised before
the digital sum. DAC and ADC round to a grid of 2^b - 2 steps over their range (aihwkit's ``inp_res`` /
``out_res`` = 1 / (2^b - 2)) with straight-through gradients; the noise is redrawn at every MVM and carries no
gradient. A crossbar row is one element of the flattened weight row (in_features, or C/groups * kernel of a
conv, in PyTorch's order), so a conv tile may end inside a channel.

Input range (the supplement's learned, static alpha per layer, B.1): initialised to ``input_range_std`` (3)
standard deviations of the layer's input on calibration batches (AnalogTiles.calibrate; IBM-HWA uses the FP
model's first 10 training batches, as aihwkit's init_from_data with init_std_alpha 3) and then trained by the
optimizer through the exact derivative of alpha * MVM(clip(x, -alpha, alpha) / alpha) with straight-through
converters: clipped inputs pull alpha up, the noise and rounding, which scale with alpha, pull it down (a
reading: aihwkit uses a hand-made gradient of the clipped inputs plus a decay term instead).

IR drop (reading of aihwkit's steady-state approximation, which the supplement uses): with the tile's
a_i = (rows / g_ratio) * sum_j |w_ij| |x_j| and c_i = a_i (a_i (0.05 a_i - 0.2) + 0.5), output i loses
ir_drop * c_i * sum_j w_ij x_j (1 - (1 - j/rows)^2): row j's share of the drop grows quadratically with its
position j along the tile's wire (0-based within the tile).

Drift compensation (the supplement's global drift compensation, a scalar from a reference read): every row of a
tile is read with a one-hot input through the same analog path (IO noise, ADC) on the weights of the draw, and
the factor is the least-squares gain sum ref^2 / sum ref * read against the programmed weights ref (an exact
reference, as aihwkit's GlobalDriftCompensationWithExactReference), per tile and block of ``tile_cols``
columns (global) or per column (column). Reading: aihwkit divides mean |read| right after programming by
mean |read| at the inference time; a draw here holds programming error and drift together, and against the
exact targets mean |read| would also "correct" the zero-mean programming noise (E|w + n| > |w|) by shrinking
every output, so the gain is a projection instead, which noise does not bias and which undoes a drift scale s
(to 1/s) all the same.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.analog.tile import AnalogTileConfig
from models.noise.base import randn_draws

ANALOG_LAYERS: dict[type[nn.Module], Callable[..., Tensor]] = {
    nn.Conv1d: F.conv1d,
    nn.Conv2d: F.conv2d,
    nn.Conv3d: F.conv3d,
    nn.Linear: F.linear,
}
_TINY = 1e-12
_READ_FLOOR = 1e-4  # a compensation gain is at most 1 / this (a tile read as nothing but noise)
Normal = Callable[[tuple[int, ...], Tensor], Tensor]  # (shape, like) -> standard normals of one draw


def converter_step(bits: int, bound: float) -> float:
    """The step of a b-bit converter over [-bound, bound]: 2 bound / (2^b - 2), so 0 and +-bound are levels."""
    return 2.0 * bound / (2**bits - 2)


def quantize(x: Tensor, bits: int | None, bound: float) -> Tensor:
    """``x`` rounded (half to even) to the converter grid; the gradient passes straight through the rounding."""
    if bits is None:
        return x
    step = converter_step(bits, bound)
    q = torch.round(x / step) * step
    if torch.is_grad_enabled() and x.requires_grad:
        return x + (q - x).detach()
    return q


def dac(x: Tensor, bits: int | None) -> Tensor:
    """The input DAC: clip to the input bound [-1, 1], then quantise (straight-through inside the bound)."""
    return quantize(x.clamp(-1.0, 1.0), bits, 1.0)


def adc(z: Tensor, bits: int | None, bound: float | None) -> Tensor:
    """The output ADC: clip to [-bound, bound] (no gradient beyond it), then quantise."""
    if bound is None:
        return z
    return quantize(z.clamp(-bound, bound), bits, bound)


def input_stage(x: Tensor, alpha: Tensor | None, config: AnalogTileConfig) -> Tensor:
    """x / alpha clipped to [-1, 1] (differentiable in alpha too) and through the DAC."""
    if config.input_range and alpha is not None:
        x = torch.minimum(torch.maximum(x, -alpha), alpha) / alpha
    return dac(x, config.dac_bits)


@dataclass(frozen=True)
class TileSlice:
    """One tile of a layer: the slice [lo, hi) of the weight's dim 1 it reads, and which of those rows it holds."""

    lo: int
    hi: int
    rows: int  # crossbar rows held
    mask: Tensor | None  # (hi-lo, *kernel) 0/1 of the held rows (None: every row of the slice)
    position: Tensor  # (hi-lo, *kernel): IR-drop weight 1 - (1 - j/rows)^2 of held row j, 0 elsewhere


@dataclass(frozen=True)
class LayerPlan:
    """How one Conv/Linear layer maps onto tiles, and its linear map without bias."""

    kind: Literal["conv", "linear"]
    out_features: int
    in_per_group: int  # weight.shape[1]
    kernel: tuple[int, ...]  # () for a linear layer
    tiles: tuple[TileSlice, ...]
    conv: Callable[..., Tensor] | None
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    @property
    def slices_input(self) -> bool:
        """Whether a tile reads only its slice of the input (not for grouped convs, whose slices are per group)."""
        return self.kind == "linear" or self.groups == 1

    def weight_view(self, v: Tensor) -> Tensor:
        """A per-output vector (N,) shaped to broadcast against a weight (N, C, *kernel) or stacked (n, N, ...)."""
        return v.view(-1, *([1] * (1 + len(self.kernel))))

    def op(self, x: Tensor, w: Tensor, groups: int | None = None) -> Tensor:
        """The layer's linear map of ``x`` with weight ``w``, no bias (one draw)."""
        if self.conv is None:
            return F.linear(x, w)
        g = self.groups if groups is None else groups
        return self.conv(x, w, None, self.stride, self.padding, self.dilation, g)


def plan_layer(mod: nn.Module, config: AnalogTileConfig) -> LayerPlan:
    """The tiles of a Conv1d/2d/3d or Linear layer: consecutive runs of ``tile_rows`` rows of the flattened weight row."""
    w = mod.weight
    if not isinstance(w, Tensor):
        raise ValueError(f"analog tiles need a weight tensor; this {type(mod).__name__} has {type(w).__name__}")
    kernel = tuple(int(k) for k in w.shape[2:])
    kk = 1
    for k in kernel:
        kk *= k
    k_rows = int(w.shape[1]) * kk
    per = config.tile_rows or k_rows
    tiles = []
    for r0 in range(0, k_rows, per):
        r1 = min(r0 + per, k_rows)
        tiles.append(_tile(r0, r1, int(w.shape[1]), kernel, kk, slice_channels=_slices(mod), like=w))
    if isinstance(mod, nn.Linear):
        return LayerPlan("linear", int(w.shape[0]), int(w.shape[1]), (), tuple(tiles), None)
    conv = ANALOG_LAYERS[type(mod)]
    assert isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    if mod.padding_mode != "zeros":
        raise ValueError(f"analog tiles need zero padding; this {type(mod).__name__} pads with {mod.padding_mode!r}")
    return LayerPlan(
        "conv",
        int(w.shape[0]),
        int(w.shape[1]),
        kernel,
        tuple(tiles),
        conv,
        tuple(mod.stride),
        mod.padding if isinstance(mod.padding, str) else tuple(mod.padding),
        tuple(mod.dilation),
        int(mod.groups),
    )


def _slices(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or getattr(mod, "groups", 1) == 1


def _tile(r0: int, r1: int, c: int, kernel: tuple[int, ...], kk: int, slice_channels: bool, like: Tensor) -> TileSlice:
    """Rows [r0, r1) of the flattened (c, *kernel) weight row as a slice of channels plus a mask of held rows."""
    lo, hi = (r0 // kk, -(-r1 // kk)) if slice_channels else (0, c)
    flat = torch.arange(lo * kk, hi * kk, device=like.device)
    held = (flat >= r0) & (flat < r1)
    j = (flat - r0).to(like.dtype)
    rows = r1 - r0
    pos = torch.where(held, 1.0 - (1.0 - j / rows) ** 2, torch.zeros_like(j)).reshape(hi - lo, *kernel)
    mask = None if bool(held.all()) else held.to(like.dtype).reshape(hi - lo, *kernel)
    return TileSlice(lo, hi, rows, mask, pos.detach())


def weight_slice(plan: LayerPlan, w: Tensor, tile: TileSlice) -> Tensor:
    """The part of weight ``w`` (N, C, *kernel) or stacked (n, N, C, *kernel) that tile ``tile`` holds (0 elsewhere)."""
    dim = w.dim() - 1 - len(plan.kernel)
    ws = w.narrow(dim, tile.lo, tile.hi - tile.lo) if (tile.lo, tile.hi) != (0, w.shape[dim]) else w
    return ws if tile.mask is None else ws * tile.mask


def tile_scales(plan: LayerPlan, clean: Tensor, config: AnalogTileConfig) -> list[Tensor]:
    """gamma_t per tile, (N,): max |W| of each column of the tile (or of the whole tile), from the clean weights.

    With ``out_scale_levels`` N the column scales are stored as integers times one scale per tile (Suppl. B.3.1,
    eq. 1): q_i = a_N ceil(gamma_i / a_N), a_N = max_k gamma_k / N, so at most N values 1..N times a_N; q_i >=
    gamma_i, and the conductances W / q_i stay within g_max (the weight is held as diag(q) (diag(gamma / q) W_hat)).
    """
    out = []
    with torch.no_grad():
        for tile in plan.tiles:
            m = weight_slice(plan, clean.detach(), tile).abs().flatten(1).amax(1)
            if config.out_scale == "tile":
                m = m.amax().expand_as(m)
            m = m.clamp(min=_TINY)
            if config.out_scale_levels is not None:
                m = integer_scales(m, config.out_scale_levels)
            out.append(m)
    return out


def integer_scales(gamma: Tensor, levels: int) -> Tensor:
    """Suppl. B.3.1 eq. 1: a_N ceil(gamma / a_N) with a_N = max gamma / N, the integer in 1..N.

    A ratio within 4 ulps above an integer is that integer (gamma = k a_N computed in floating point often
    divides to k (1 + eps)); q may then fall short of gamma by those 4 ulps, a conductance 4 ulps above g_max.
    """
    a_n = gamma.max() / levels
    ratio = gamma / a_n
    return a_n * torch.ceil(ratio * (1 - 4 * torch.finfo(gamma.dtype).eps)).clamp(1, levels)


class Layout(abc.ABC):
    """Where the draws live in the tensors of one layer call: slicing, the linear map, per-column views, noise."""

    @abc.abstractmethod
    def x_tile(self, xq: Tensor, tile: TileSlice) -> Tensor:
        """The tile's rows of the quantised input."""

    def w_tile(self, w_hat: Tensor) -> Tensor:
        return w_hat

    @abc.abstractmethod
    def op(self, x: Tensor, w: Tensor) -> Tensor:
        """The linear map of one tile (matmul or conv) in this layout."""

    @abc.abstractmethod
    def out_col(self, v: Tensor) -> Tensor:
        """A per-column vector, (N,) shared or (n, N) per draw, shaped to broadcast against the op's output."""

    @abc.abstractmethod
    def noise(self, z: Tensor) -> Tensor:
        """Standard normals shaped like ``z``, each draw's from its own stream in its own output order."""


class SingleLayout(Layout):
    """One draw in the layer's own layout (also each draw's view inside vmap)."""

    def __init__(self, plan: LayerPlan, normal: Normal) -> None:
        self.plan, self.normal = plan, normal

    def x_tile(self, xq: Tensor, tile: TileSlice) -> Tensor:
        dim = xq.dim() - 1 - len(self.plan.kernel) if self.plan.kind == "conv" else xq.dim() - 1
        if not self.plan.slices_input or (tile.lo, tile.hi) == (0, xq.shape[dim]):
            return xq
        return xq.narrow(dim, tile.lo, tile.hi - tile.lo)

    def op(self, x: Tensor, w: Tensor) -> Tensor:
        return self.plan.op(x, w)

    def out_col(self, v: Tensor) -> Tensor:
        return v.view(-1, *([1] * len(self.plan.kernel))) if self.plan.kind == "conv" else v

    def noise(self, z: Tensor) -> Tensor:
        if self.plan.kind == "linear":  # drawn feature-major, (N, M), as the folded layout computes it
            out = self.plan.out_features
            return self.normal((out, z.numel() // out), z).t().reshape(z.shape)
        return self.normal(tuple(z.shape), z)


class FoldedConvLayout(Layout):
    """n draws folded into the channel axis: (B, n*C, ...) activations, grouped convs (models.batched)."""

    def __init__(self, plan: LayerPlan, n: int, shared: bool, streams: list[torch.Generator]) -> None:
        self.plan, self.n, self.shared, self.streams = plan, n, shared, streams

    def x_tile(self, xq: Tensor, tile: TileSlice) -> Tensor:
        c = self.plan.in_per_group * self.plan.groups
        if not self.plan.slices_input or (tile.lo, tile.hi) == (0, c):
            return xq
        if self.shared:
            return xq[:, tile.lo : tile.hi]
        b, sp = xq.shape[0], xq.shape[2:]
        return xq.view(b, self.n, c, *sp)[:, :, tile.lo : tile.hi].reshape(b, self.n * (tile.hi - tile.lo), *sp)

    def w_tile(self, w_hat: Tensor) -> Tensor:
        return w_hat.reshape(self.n * w_hat.shape[1], *w_hat.shape[2:])

    def op(self, x: Tensor, w: Tensor) -> Tensor:
        return self.plan.op(x, w, groups=1 if self.shared else self.n * self.plan.groups)

    def out_col(self, v: Tensor) -> Tensor:
        flat = v.repeat(self.n) if v.dim() == 1 else v.reshape(-1)
        return flat.view(-1, *([1] * len(self.plan.kernel)))

    def noise(self, z: Tensor) -> Tensor:
        b, nn_, sp = z.shape[0], z.shape[1], tuple(z.shape[2:])
        e = randn_draws((b, nn_ // self.n, *sp), z, self.streams)  # (n, B, N, ...): draw i from stream i
        return e.transpose(0, 1).reshape(z.shape)


class FoldedLinearLayout(Layout):
    """n draws of a Linear layer, feature-major: inputs (fin, M) shared or (n, fin, M), outputs (n, N, M)."""

    def __init__(self, plan: LayerPlan, n: int, shared: bool, streams: list[torch.Generator]) -> None:
        self.plan, self.n, self.shared, self.streams = plan, n, shared, streams

    def x_tile(self, xq: Tensor, tile: TileSlice) -> Tensor:
        if (tile.lo, tile.hi) == (0, self.plan.in_per_group):
            return xq
        return xq.narrow(-2, tile.lo, tile.hi - tile.lo)

    def op(self, x: Tensor, w: Tensor) -> Tensor:
        if self.shared:  # one GEMM over all draws' rows
            n, out, r = w.shape
            return torch.mm(w.reshape(n * out, r), x).view(n, out, -1)
        return torch.bmm(w, x)

    def out_col(self, v: Tensor) -> Tensor:
        return v.view(1, -1, 1) if v.dim() == 1 else v.view(self.n, -1, 1)

    def noise(self, z: Tensor) -> Tensor:
        return randn_draws(tuple(z.shape[1:]), z, self.streams)  # each draw's (N, M), feature-major


def layer_forward(
    plan: LayerPlan,
    config: AnalogTileConfig,
    layout: Layout,
    x: Tensor,
    w: Tensor,
    gammas: list[Tensor],
    comps: list[Tensor] | None,
    alpha: Tensor | None,
    bias: Tensor | None,
    inplace: bool = True,
) -> Tensor:
    """alpha * sum_t gamma_t * c_t * ADC(z_t) + bias over the layer's tiles, in ``layout``.

    With gradients on, every step is an out-of-place, differentiable op (straight-through DAC/ADC); with them
    off (evaluation, Monte Carlo) the same arithmetic runs in place with the output scales folded into one
    per-column factor, which costs far fewer passes over the activations (``inplace=False``: never, as in vmap,
    which has no batching rule for some in-place ops).
    """
    if torch.is_grad_enabled() or not inplace:
        return _layer_differentiable(plan, config, layout, x, w, gammas, comps, alpha, bias)
    return _layer_inplace(plan, config, layout, x, w, gammas, comps, alpha, bias)


def _ir_factor(a: Tensor) -> Tensor:
    """c = a (a (0.05 a - 0.2) + 0.5), the steady-state IR-drop factor of a column with normalised current a."""
    return a * (a * (0.05 * a - 0.2) + 0.5)


def _layer_differentiable(
    plan: LayerPlan,
    config: AnalogTileConfig,
    layout: Layout,
    x: Tensor,
    w: Tensor,
    gammas: list[Tensor],
    comps: list[Tensor] | None,
    alpha: Tensor | None,
    bias: Tensor | None,
) -> Tensor:
    xq = input_stage(x, alpha, config)
    total: Tensor | None = None
    noisy = config.out_noise > 0 or config.w_noise > 0
    for t, tile in enumerate(plan.tiles):
        g = gammas[t]
        w_hat = weight_slice(plan, w, tile) / plan.weight_view(g)
        xt = layout.x_tile(xq, tile)
        z = layout.op(xt, layout.w_tile(w_hat))
        if config.ir_drop > 0:
            a = (tile.rows / config.ir_drop_g_ratio) * layout.op(xt.abs(), layout.w_tile(w_hat.abs()))
            z = z - config.ir_drop * _ir_factor(a) * layout.op(xt, layout.w_tile(w_hat * tile.position))
        if noisy:
            with torch.no_grad():
                e = _add_noise(config, layout, xt.detach(), w_hat.detach().abs(), tile, torch.zeros_like(z), False)
            z = z + e
        y = adc(z, config.adc_bits, config.out_bound)
        if comps is not None:
            y = y * layout.out_col(comps[t])
        y = y * layout.out_col(g)
        total = y if total is None else total + y
    assert total is not None
    if alpha is not None and config.input_range:
        total = total * alpha
    return total if bias is None else total + layout.out_col(bias)


def _add_noise(
    config: AnalogTileConfig,
    layout: Layout,
    xt: Tensor,
    w_abs: Tensor | None,
    tile: TileSlice,
    z: Tensor,
    inplace: bool,
) -> Tensor:
    """z plus one MVM's noise: sqrt(out_noise^2 + w_noise^2 * sum_j h_ij x_j^2) * N(0, 1), h = |w| (pcm_read) or 1."""
    e = layout.noise(z)
    if config.w_noise == 0:
        return z.add_(e, alpha=config.out_noise) if inplace else z + config.out_noise * e
    if config.w_noise_type == "pcm_read":
        assert w_abs is not None
        held = w_abs
    else:
        held = (torch.ones_like(tile.position) if tile.mask is None else tile.mask).expand_as(
            w_abs if w_abs is not None else tile.position
        )
    s = layout.op(xt.square(), layout.w_tile(held))
    std = s.mul_(config.w_noise**2).add_(config.out_noise**2).sqrt_()
    return z.addcmul_(e, std) if inplace else z + e * std


def _layer_inplace(
    plan: LayerPlan,
    config: AnalogTileConfig,
    layout: Layout,
    x: Tensor,
    w: Tensor,
    gammas: list[Tensor],
    comps: list[Tensor] | None,
    alpha: Tensor | None,
    bias: Tensor | None,
) -> Tensor:
    """The no-gradient path: the ADC leaves integer levels, and step * gamma * c * alpha is one column factor."""
    if config.input_range and alpha is not None:
        a = float(alpha)
        xq = x.clamp(-a, a).div_(a)
    else:
        xq = x.clamp(-1.0, 1.0)
    if config.dac_bits is not None:
        step_in = converter_step(config.dac_bits, 1.0)
        xq = xq.div_(step_in).round_().mul_(step_in)
    total: Tensor | None = None
    for t, tile in enumerate(plan.tiles):
        g = gammas[t]
        w_hat = weight_slice(plan, w, tile) / plan.weight_view(g)
        xt = layout.x_tile(xq, tile)
        z = layout.op(xt, layout.w_tile(w_hat))
        w_abs = w_hat.abs() if config.ir_drop > 0 or config.w_noise > 0 else None
        if config.ir_drop > 0:
            assert w_abs is not None
            a_cur = layout.op(xt.abs(), layout.w_tile(w_abs)).mul_(tile.rows / config.ir_drop_g_ratio)
            c = torch.mul(a_cur, 0.05).sub_(0.2).mul_(a_cur).add_(0.5).mul_(a_cur)
            z.addcmul_(c, layout.op(xt, layout.w_tile(w_hat * tile.position)), value=-config.ir_drop)
        if config.out_noise > 0 or config.w_noise > 0:
            z = _add_noise(config, layout, xt, w_abs, tile, z, True)
        col = g if comps is None else g * comps[t]
        if config.out_bound is not None:
            z.clamp_(-config.out_bound, config.out_bound)
            if config.adc_bits is not None:
                step_out = converter_step(config.adc_bits, config.out_bound)
                z.div_(step_out).round_()
                col = col * step_out
        if alpha is not None and config.input_range:
            col = col * alpha
        colv = layout.out_col(col)
        if total is None:
            total = z.mul_(colv) if bias is None else torch.addcmul(layout.out_col(bias), z, colv)
        else:
            total.addcmul_(z, colv)
    assert total is not None
    return total


def tile_read(plan: LayerPlan, config: AnalogTileConfig, w_hat: Tensor, tile: TileSlice, normal: Normal) -> Tensor:
    """One-hot reads of every held row of a tile through the analog path: (..., rows, N) digitised outputs.

    ``w_hat``: the tile's normalised weights (..., N, C_slice, *kernel) (masked); ``normal`` draws one read's noise.
    """
    flat = _held_rows(plan, w_hat, tile)  # (..., N, rows)
    pos = tile.position.reshape(-1)
    if tile.mask is not None:
        pos = pos.index_select(0, tile.mask.reshape(-1).nonzero().squeeze(1))
    z = flat.transpose(-1, -2).contiguous()  # row j read alone: output i is w_ij
    if config.ir_drop > 0:
        c = _ir_factor(z.abs().mul_(tile.rows / config.ir_drop_g_ratio))
        z.mul_(c.mul_(pos[:, None]).mul_(-config.ir_drop).add_(1.0))  # w x (1 - ir c d_j), x = 1
    if config.out_noise > 0 or config.w_noise > 0:
        e = normal(tuple(z.shape[-2:]), z)
        if config.w_noise > 0 and config.w_noise_type == "pcm_read":
            z.addcmul_(e, z.abs().mul_(config.w_noise**2).add_(config.out_noise**2).sqrt_())
        else:
            z.add_(e, alpha=(config.out_noise**2 + config.w_noise**2) ** 0.5)
    return adc(z, config.adc_bits, config.out_bound)


def _blocks(v: Tensor, config: AnalogTileConfig) -> Tensor:
    """Per-column sums (..., N) pooled per column (column) or per block of ``tile_cols`` columns (global)."""
    if config.drift_compensation == "column":
        return v
    n = v.shape[-1]
    cols = config.tile_cols or n
    parts = [
        v[..., c0 : c0 + cols].sum(-1, keepdim=True).expand(*v.shape[:-1], min(cols, n - c0))
        for c0 in range(0, n, cols)
    ]
    return torch.cat(parts, -1)


@torch.no_grad()
def compensation(
    plan: LayerPlan,
    config: AnalogTileConfig,
    w: Tensor,
    clean: Tensor,
    gammas: list[Tensor],
    normal: Normal,
) -> list[Tensor] | None:
    """Drift-compensation factors per tile, (..., N): sum ref^2 / sum ref * read, ref the programmed weights.

    ``w`` is one draw (N, ...) or stacked (n, N, ...); each tile's rows are read one-hot through the analog path
    with fresh noise from ``normal`` (one draw's noise per call; batched normals fill every draw).
    """
    if config.drift_compensation == "none":
        return None
    out = []
    for t, tile in enumerate(plan.tiles):
        g = plan.weight_view(gammas[t])
        ref = _held_rows(plan, weight_slice(plan, clean, tile) / g, tile).transpose(-1, -2)  # (rows, N), exact
        now = tile_read(plan, config, weight_slice(plan, w, tile) / g, tile, normal)  # (..., rows, N)
        num = _blocks((ref * ref).sum(-2), config)
        den = _blocks((now * ref).sum(-2), config)
        out.append(num / torch.maximum(den, _READ_FLOOR * num))
    return out


def _held_rows(plan: LayerPlan, w_hat: Tensor, tile: TileSlice) -> Tensor:
    """The tile's normalised weights as (..., N, rows): its held rows, flattened in crossbar order."""
    flat = w_hat.flatten(-1 - len(plan.kernel))
    if tile.mask is not None:
        flat = flat.index_select(-1, tile.mask.reshape(-1).nonzero().squeeze(1))
    return flat
