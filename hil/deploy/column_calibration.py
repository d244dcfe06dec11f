"""Calibration after read-back: a per-column affine correction of each analog layer and global drift compensation.

Column calibration (the digital periphery of a CIM macro): a few calibration inputs (training inputs, never
test ones) run through the deployed network; at each analog layer (a Conv/Linear weight read back from the
chip) the layer's output on the chip weights is compared with its output on the trained weights for the same
layer input, and each output column (Linear output, Conv channel) j gets the least-squares fit
y_ideal ~ gain_j * y_chip + offset_j. The fit is digital, folded into the returned parameters: weight row j
times gain_j, bias_j -> gain_j * bias_j + offset_j. A layer without a bias keeps its structure: only the gain
is fitted (a line through the origin). Layers are fitted in forward order, each on the inputs the already
corrected chip network feeds it, the signals its periphery will see. A column whose chip output does not vary
on the calibration inputs (a dead column) carries no information and keeps gain 1, offset 0.

Drift compensation, after the IBM hardware-aware training paper's "global" scheme (its supplement, Table 1:
one compensation per analog tile, not per column; its PCM model reads a fixed reference input through the
tile right after programming and again at evaluation time and scales the tile's output by the ratio of the
two summed absolute outputs). Readings taken where the text is silent: a tile is one layer here (the layer's
array tiles are read together); a layer's reference input is what that layer saw on `x_ref` in the network
at t0, stored in `DriftReference` and replayed unchanged at t; the factor scales only the analog part, so it
multiplies the weights, and the bias (digital in this stack, as in the paper's model) is left as it is. The
paper applies no drift compensation to its ReRAM data (no mean drift expected); a chip whose read-back
relaxes on average, or a temperature change, still gets a common scale that this corrects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn

# A column whose chip output varies (rms about its mean) by less than this many float roundings of the layer's
# largest output carries no measurable signal: its gain cannot be fitted.
DEGENERATE_ROUNDINGS = 16


@dataclass(frozen=True)
class ColumnAffine:
    """One analog layer's digital per-column correction y = gain * y_chip + offset (fitted on x_cal)."""

    gain: Tensor  # (out,)
    offset: Tensor  # (out,), zeros when the layer has no bias
    has_offset: bool  # False: the layer has no bias, so only the gain is corrected
    degenerate: Tensor  # (out,) bool: constant chip output on x_cal, left at gain 1 and offset 0


@dataclass(frozen=True)
class DriftReference:
    """Per analog layer (weight name): the fixed reference input and its summed |analog output| read at t0."""

    inputs: dict[str, Tensor]
    readout_t0: dict[str, float]


class _Captured(Exception):
    """Raised by a forward pre-hook to stop the network once the wanted layer's input is in hand."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.x = x


def calibrate_columns(
    model: nn.Module, measured: dict[str, Tensor], x_cal: Tensor
) -> tuple[dict[str, Tensor], dict[str, ColumnAffine]]:
    """Fit every analog layer's per-column gain and offset on `x_cal`, layer by layer; return the corrected params.

    ``measured``: the read-back weights (`weights_from_conductances`), every Conv/Linear weight of the model,
    optionally the chip's effective biases too. The returned dict (weights and biases of the analog layers) goes
    to `torch.func.functional_call(model, params, (x,))`; the fits apply to later read-backs with `apply_columns`.
    """
    import torch
    from torch.func import functional_call

    layers = _analog_layers(model)
    _check_inputs(x_cal, "x_cal", 2)
    chip = _chip_params(model, layers, measured)
    fits: dict[str, ColumnAffine] = {}
    with _eval_mode(model), torch.no_grad():
        for name in _call_order(model, layers, chip, x_cal):
            module = layers[name]
            x_in = _layer_input(model, module, chip, x_cal)
            bias_name = _bias_name(name) if module.bias is not None else None
            local = {"weight": chip[name]} | ({"bias": chip[bias_name]} if bias_name else {})
            y_chip = functional_call(module, local, (x_in,))
            y_ideal = module(x_in)
            fits[name] = _fit_columns(y_chip, y_ideal, isinstance(module, torch.nn.Linear), bias_name is not None)
            chip.update(_fold(name, bias_name, chip, fits[name]))
    return chip, fits


def apply_columns(model: nn.Module, measured: dict[str, Tensor], fits: dict[str, ColumnAffine]) -> dict[str, Tensor]:
    """Fold stored column fits into a (later) read-back: the params `functional_call` takes, chip structure kept."""
    layers = _analog_layers(model)
    missing = sorted(set(layers) - set(fits))
    if missing:
        raise ValueError(
            f"fits hold no column calibration for layer {missing[0]!r}: pass the fits calibrate_columns returned for this model"
        )
    chip = _chip_params(model, layers, measured)
    for name, module in layers.items():
        fit = fits[name]
        if fit.gain.shape != (chip[name].shape[0],):
            raise ValueError(
                f"the fit of layer {name!r} has {fit.gain.numel()} columns, the layer {chip[name].shape[0]}: pass this model's fits"
            )
        chip.update(_fold(name, _bias_name(name) if module.bias is not None else None, chip, fit))
    return chip


def drift_reference(model: nn.Module, weights_t0: dict[str, Tensor], x_ref: Tensor) -> DriftReference:
    """Read each analog layer's reference at t0 (right after programming and calibration): its input on x_ref, summed |W x|."""
    import torch
    from torch.func import functional_call

    layers = _analog_layers(model)
    _check_inputs(x_ref, "x_ref", 1)
    params = _chip_params(model, layers, weights_t0)
    inputs: dict[str, Tensor] = {}

    def grab(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_mod: nn.Module, args: tuple) -> None:
            inputs.setdefault(name, args[0].detach().clone())

        return hook

    handles = [m.register_forward_pre_hook(grab(n)) for n, m in layers.items()]
    try:
        with _eval_mode(model), torch.no_grad():
            functional_call(model, params, (x_ref,))
    finally:
        for h in handles:
            h.remove()
    unused = sorted(set(layers) - set(inputs))
    if unused:
        raise ValueError(
            f"layer {unused[0]!r} is not reached by the model's forward: drift compensation needs every analog layer in use"
        )
    readout = {n: _readout(layers[n], params[n], inputs[n]) for n in layers}
    for n, r in readout.items():
        if r == 0.0:
            raise ValueError(
                f"x_ref gives layer {n!r} a zero output at t0: use inputs that drive it (e.g. training inputs)"
            )
    return DriftReference(inputs, readout)


def drift_factors(model: nn.Module, weights_t: dict[str, Tensor], ref: DriftReference) -> dict[str, float]:
    """Per analog layer: summed |output| of its reference input at t0 over that at t (the scale that undoes drift)."""
    layers = _analog_layers(model)
    missing = sorted(set(layers) - set(ref.readout_t0))
    if missing:
        raise ValueError(
            f"the drift reference has no read of layer {missing[0]!r}: take it with drift_reference on this model"
        )
    params = _chip_params(model, layers, weights_t)
    out = {}
    for n, module in layers.items():
        now = _readout(module, params[n], ref.inputs[n])
        if now == 0.0:
            raise ValueError(f"layer {n!r} reads zero on its reference at t: its devices are lost, reprogram it")
        out[n] = ref.readout_t0[n] / now
    return out


def compensate_drift(
    model: nn.Module, weights_t: dict[str, Tensor], ref: DriftReference
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Scale each analog layer's weights (the analog output) by its drift factor; biases (digital) stay; returns params, factors."""
    factors = drift_factors(model, weights_t, ref)
    params = _chip_params(model, _analog_layers(model), weights_t)
    for n, f in factors.items():
        params[n] = params[n] * f
    return params, factors


def _analog_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Weight name -> module of every Conv/Linear layer (the layers a deployment puts on the chip)."""
    from models.noise.apply import NOISY_LAYERS, noisy_weight_names

    modules = dict(model.named_modules())
    names = noisy_weight_names(model)
    if not names:
        raise ValueError("the model has no Conv/Linear layer: there is nothing on the chip to calibrate")
    out = {}
    for n in names:
        module = modules[n.rsplit(".", 1)[0] if "." in n else ""]
        assert isinstance(module, NOISY_LAYERS)
        out[n] = module
    return out


def _bias_name(weight_name: str) -> str:
    return weight_name[: -len("weight")] + "bias"


def _chip_params(model: nn.Module, layers: dict[str, nn.Module], given: dict[str, Tensor]) -> dict[str, Tensor]:
    """The analog layers' weights and biases as the chip holds them: `given`, the model's own bias where none is given."""
    params = dict(model.named_parameters())
    allowed = set(layers) | {_bias_name(n) for n, m in layers.items() if m.bias is not None}
    extra = sorted(set(given) - allowed)
    if extra:
        raise ValueError(
            f"{extra[0]!r} is not a Conv/Linear weight or bias of the model: pass only read-back layer parameters"
        )
    missing = [n for n in layers if n not in given]
    if missing:
        raise ValueError(
            f"no read-back weights for layer {missing[0]!r}: pass every Conv/Linear weight (weights_from_conductances gives them)"
        )
    out = {}
    for n in sorted(allowed):
        ref = params[n]
        t = given.get(n, ref)
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(
                f"{n!r} has shape {tuple(t.shape)}, the model's {tuple(ref.shape)}: read back this model's plan"
            )
        out[n] = t.detach().to(dtype=ref.dtype, device=ref.device)
    return out


def _check_inputs(x: Tensor, what: str, least: int) -> None:
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError(f"{what} must be a batch tensor (N, ...) of training inputs")
    if len(x) < least:
        raise ValueError(f"{what} holds {len(x)} inputs, at least {least} needed: pass 64-256 training inputs")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the model in eval mode (Dropout off, BatchNorm on its running stats), restoring every module's mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _call_order(model: nn.Module, layers: dict[str, nn.Module], params: dict[str, Tensor], x: Tensor) -> list[str]:
    """The analog layers in the order the forward calls them; each must be called exactly once."""
    from torch.func import functional_call

    order: list[str] = []

    def mark(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_mod: nn.Module, _args: tuple) -> None:
            order.append(name)

        return hook

    handles = [m.register_forward_pre_hook(mark(n)) for n, m in layers.items()]
    try:
        functional_call(model, params, (x[:1],))
    finally:
        for h in handles:
            h.remove()
    for n in layers:
        if order.count(n) != 1:
            raise ValueError(
                f"layer {n!r} runs {order.count(n)} times in one forward: column calibration needs each analog layer used once"
            )
    return order


def _layer_input(model: nn.Module, module: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """The input `module` receives when the network (with `params`) runs on x; the forward stops there."""
    from torch.func import functional_call

    def hook(_mod: nn.Module, args: tuple) -> None:
        raise _Captured(args[0])

    handle = module.register_forward_pre_hook(hook)
    try:
        functional_call(model, params, (x,))
    except _Captured as got:
        return got.x
    finally:
        handle.remove()
    raise AssertionError("the layer was called in the order pass but not now")  # _call_order saw it run once


def _fit_columns(y_chip: Tensor, y_ideal: Tensor, linear: bool, with_offset: bool) -> ColumnAffine:
    """Per-column least squares y_ideal ~ gain * y_chip + offset (through the origin without offset), in float64."""
    import torch

    dim = -1 if linear else 1  # Linear: (..., out); Conv: (N, out, ...)
    n_out = y_chip.shape[dim]
    z = y_chip.movedim(dim, -1).reshape(-1, n_out).double()
    t = y_ideal.movedim(dim, -1).reshape(-1, n_out).double()
    zm = z.mean(0) if with_offset else torch.zeros(n_out, dtype=z.dtype, device=z.device)
    tm = t.mean(0) if with_offset else torch.zeros_like(zm)
    sxx, sxy = ((z - zm) ** 2).sum(0), ((z - zm) * (t - tm)).sum(0)
    # rms spread below DEGENERATE_ROUNDINGS float roundings of the layer's largest chip output: no signal to fit.
    floor = DEGENERATE_ROUNDINGS * torch.finfo(y_chip.dtype).eps * float(z.abs().max())
    degenerate = (sxx / len(z)).sqrt() <= floor
    safe = torch.where(degenerate, torch.ones_like(sxx), sxx)
    gain = torch.where(degenerate, torch.ones_like(sxx), sxy / safe)
    offset = torch.where(degenerate, torch.zeros_like(sxx), tm - gain * zm)  # zero without offset: zm = tm = 0
    return ColumnAffine(gain.to(y_chip.dtype), offset.to(y_chip.dtype), with_offset, degenerate)


def _fold(name: str, bias_name: str | None, params: dict[str, Tensor], fit: ColumnAffine) -> dict[str, Tensor]:
    """A layer's corrected weight (rows times gain) and bias (gain * bias + offset)."""
    w = params[name]
    gain = fit.gain.to(dtype=w.dtype, device=w.device)
    out = {name: w * gain.reshape(-1, *([1] * (w.dim() - 1)))}
    if bias_name is not None:
        out[bias_name] = gain * params[bias_name] + fit.offset.to(dtype=w.dtype, device=w.device)
    return out


def _readout(module: nn.Module, weight: Tensor, x: Tensor) -> float:
    """Summed |analog output| (the layer without its digital bias) of reference input x, in float64."""
    import torch
    from torch.func import functional_call

    local = {"weight": weight.double()}
    if module.bias is not None:
        local["bias"] = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    with torch.no_grad():
        return float(functional_call(module, local, (x.double(),)).abs().sum())
