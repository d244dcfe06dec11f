"""Many weight draws in one forward pass: the draw axis folded into the channel axis (grouped convs).

With n draws, activations are laid out (B, n*C, ...) draw-major, so ReLU, pooling, flatten and
residual additions work unchanged; Conv/Linear layers become grouped convs / batched matmuls over the
stacked weights, and eval-mode BatchNorm repeats its statistics n times. The first layer sees the
shared input and runs as one wide conv / GEMM. Only the instances' ``forward`` attributes are swapped,
inside a context manager; the model's class is untouched. Models with other channel-mixing operations
are caught by ``check_folded`` (compared against torch.func.vmap) and then run with vmap instead.
Under ``models.analog.analog_tiles`` both layouts run the analog tile forward of the Conv/Linear layers
instead (the digital path is unchanged without it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from models.analog.context import active_tiles

ConvLayer = nn.Conv1d | nn.Conv2d | nn.Conv3d
BatchNormLayer = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
_CONV: dict[type[nn.Module], Callable[..., Tensor]] = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Unsupported(RuntimeError):
    """The model uses a layer configuration the folded layout cannot express."""


def _rep(t: Tensor | None, n: int) -> Tensor | None:
    return None if t is None else t.repeat(n)


def _is_conv(mod: nn.Module) -> TypeGuard[ConvLayer]:
    """Exactly a Conv1d/2d/3d (a subclass may override ``forward``, so it is not folded)."""
    return type(mod) in _CONV


def _is_batchnorm(mod: nn.Module) -> TypeGuard[BatchNormLayer]:
    """Exactly a BatchNorm1d/2d/3d, for the same reason."""
    return type(mod) in _BN


def _conv(mod: ConvLayer, w: Tensor, n: int) -> Callable[[Tensor], Tensor]:
    fn = _CONV[type(mod)]
    if mod.padding_mode != "zeros":
        raise Unsupported(f"padding_mode {mod.padding_mode!r}")
    cin, g = mod.in_channels, mod.groups
    wf = w.reshape(n * w.shape[1], *w.shape[2:])
    bias = _rep(mod.bias, n)

    def forward(x: Tensor) -> Tensor:
        if x.shape[1] == cin and n > 1:
            if g == 1:
                return fn(x, wf, bias, mod.stride, mod.padding, mod.dilation, 1)
            x = x.repeat(1, n, *([1] * (x.dim() - 2)))
        if x.shape[1] != n * cin:
            raise Unsupported(f"conv input has {x.shape[1]} channels, expected {cin} or {n * cin}")
        return fn(x, wf, bias, mod.stride, mod.padding, mod.dilation, n * g)

    return forward


def _linear(mod: nn.Linear, w: Tensor, n: int) -> Callable[[Tensor], Tensor]:
    """Stacked Linear, computed feature-major: every GEMM is (out, in) @ (in, samples).

    The result is the (samples, n*out) view of an (n*out, samples) buffer, so a chain of Linear
    layers (and the elementwise ops between them, which keep that layout) needs no transpose copies.
    """
    fin, fout = mod.in_features, mod.out_features
    wf = w.reshape(n * fout, fin)
    bias = None if mod.bias is None else mod.bias.repeat(n)[:, None]  # (n*out, 1)
    bias_b = None if mod.bias is None else mod.bias[None, :, None]  # (1, out, 1)

    def forward(x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        if x.shape[-1] == fin and n > 1:  # shared input: one GEMM
            xt = x.reshape(-1, fin).t()  # (in, M)
            y = torch.mm(wf, xt) if bias is None else torch.addmm(bias, wf, xt)  # (n*out, M)
        else:
            if x.shape[-1] != n * fin:
                raise Unsupported(f"linear input has {x.shape[-1]} features, expected {fin} or {n * fin}")
            xs = x.reshape(-1, n, fin).permute(1, 2, 0)  # (n, in, M)
            y = torch.bmm(w, xs) if bias_b is None else torch.baddbmm(bias_b, w, xs)  # (n, out, M)
            y = y.reshape(n * fout, -1)
        return y.t().reshape(*lead, n * fout)

    return forward


def _batchnorm(mod: BatchNormLayer, n: int) -> Callable[[Tensor], Tensor]:
    if mod.training or mod.running_mean is None:
        raise Unsupported("BatchNorm in training mode or without running statistics")
    c = mod.num_features
    stats = (_rep(mod.running_mean, n), _rep(mod.running_var, n), _rep(mod.weight, n), _rep(mod.bias, n))

    def forward(x: Tensor) -> Tensor:
        if x.shape[1] == c and n > 1:
            return F.batch_norm(x, mod.running_mean, mod.running_var, mod.weight, mod.bias, False, 0.0, mod.eps)
        if x.shape[1] != n * c:
            raise Unsupported(f"batchnorm input has {x.shape[1]} channels, expected {c} or {n * c}")
        return F.batch_norm(x, stats[0], stats[1], stats[2], stats[3], False, 0.0, mod.eps)

    return forward


def _folded_layer(mod: nn.Module, stacked_weight: Tensor | None, n: int) -> Callable[[Tensor], Tensor] | None:
    """The folded ``forward`` for ``mod`` (its own weight repeated when not stacked), None if it needs none."""
    if _is_conv(mod):
        w = mod.weight.detach().expand(n, *mod.weight.shape) if stacked_weight is None else stacked_weight
        return _conv(mod, w, n)
    if type(mod) is nn.Linear:
        w = mod.weight.detach().expand(n, *mod.weight.shape) if stacked_weight is None else stacked_weight
        return _linear(mod, w, n)
    if _is_batchnorm(mod):
        return _batchnorm(mod, n)
    return None


@torch.no_grad()
def folded_forward(model: nn.Module, stacked: dict[str, Tensor], x: Tensor) -> Tensor:
    """Logits of every draw, (n, B, ...), for stacked Conv/Linear weights ``{name: (n, *shape)}``."""
    n = next(iter(stacked.values())).shape[0]
    tiles = active_tiles(model)
    analog = tiles.folded_forwards(stacked, n) if tiles is not None else {}
    patched: list[tuple[nn.Module, Callable[[Tensor], Tensor] | None]] = []
    try:
        for name, mod in model.named_modules():
            key = f"{name}.weight" if name else "weight"
            forward = analog.get(name) or _folded_layer(mod, stacked.get(key), n)
            if forward is not None:
                patched.append((mod, vars(mod).get("forward")))
                mod.forward = forward
        out = model(x)
    finally:
        for mod, prev in reversed(patched):
            if prev is None:
                del mod.forward
            else:
                mod.forward = prev
    if not isinstance(out, Tensor) or out.dim() < 2 or out.shape[1] % n:
        raise Unsupported("model output is not a (B, n*K, ...) tensor")
    if n == 1:
        return out.unsqueeze(0)
    return out.reshape(out.shape[0], n, out.shape[1] // n, *out.shape[2:]).movedim(1, 0)


def vmap_forward(model: nn.Module, stacked: dict[str, Tensor], x: Tensor) -> Tensor:
    """Logits of every draw, (n, B, ...), with torch.func.vmap over functional_call (any model)."""
    tiles = active_tiles(model)
    if tiles is not None:
        return tiles.vmap_forward(stacked, x)
    return vmap(lambda p, xb: functional_call(model, p, (xb,)), in_dims=(0, None))(stacked, x)


@torch.no_grad()
def check_folded(model: nn.Module, stacked: dict[str, Tensor], x: Tensor) -> bool:
    """True when the folded layout reproduces vmap's logits on ``x`` for these draws (else use vmap).

    Under analog tiles the check runs on the digital layers: folding is a property of the network's wiring,
    and the tiles' noise and ADC rounding would make the two engines differ by an ADC step now and then.
    """
    tiles = active_tiles(model)
    if tiles is not None:
        with tiles.suspended():
            return check_folded(model, stacked, x)
    try:
        a = folded_forward(model, stacked, x)
    except (Unsupported, RuntimeError, ValueError):
        return False
    b = vmap_forward(model, stacked, x)
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) + 1e-12
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-4 * scale))
