"""NeFT negative-feedback training (Qin et al., TCAD 2025): OVF (Algorithm 1) and IRS (Algorithm 2).

Both build O_total = a_b * O_backbone - a_f * beta * sum_n gamma_n * Out_n (eq. 1-2) and train with
cross-entropy on O_total (eq. 3); the feedback parts exist only during training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from models.methods._util import first_batch, norm_buffer_copies, require_noise
from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions, option
from models.methods.registry import METHODS
from models.noise.apply import clean_weights, forward_with_weights
from models.noise.base import WeightNoise


def ovf_gammas(n: int) -> list[float]:
    """OVF decay factors gamma_n = 10^(n-N), n = 1..N (the noisiest forward gets weight 1)."""
    return [10.0 ** (k - n) for k in range(1, n + 1)]


def irs_gammas(n: int) -> list[float]:
    """IRS decay factors gamma_n = 10^(1-n), n = 1..N (the shallowest snapshot gets weight 1)."""
    return [10.0 ** (1 - k) for k in range(1, n + 1)]


def negative_feedback_logits(
    backbone: Tensor,
    feedback: Sequence[Tensor],
    beta: float,
    gammas: Sequence[float],
    a_b: float | None = None,
    a_f: float | None = None,
) -> Tensor:
    """NeFT eq. 1-2: a_b * O_backbone - a_f * beta * sum_n gamma_n Out_n, with a_b = a_f = 1/(N+1) by default."""
    if len(feedback) != len(gammas):
        raise ValueError(f"{len(feedback)} feedback outputs but {len(gammas)} decay factors")
    n = len(feedback)
    a_b = 1.0 / (n + 1) if a_b is None else a_b
    a_f = 1.0 / (n + 1) if a_f is None else a_f
    fb = sum(g * o for g, o in zip(gammas, feedback))
    return a_b * backbone - a_f * beta * fb


def oriented_factors(
    noise: WeightNoise, n: int, delta_sigma: float, relative_delta: float, sigma: float | None = None
) -> list[float]:
    """Scale factors turning the device noise into the oriented noises sigma + n * delta_sigma, n = 1..N.

    With a paper family (scalar sigma_d, log-normal s or additive eta) the factor is
    (sigma + n*delta_sigma) / sigma; a measured profile has no single sigma, so the step is relative:
    1 + n * relative_delta.
    """
    base = sigma if sigma is not None else noise.magnitude
    if base is not None and base > 0:
        return [(base + k * delta_sigma) / base for k in range(1, n + 1)]
    return [1.0 + k * relative_delta for k in range(1, n + 1)]


_A_B_HELP = "backbone output scale a_b (none = the paper's 1/(N+1))"
_A_F_HELP = "feedback output scale a_f (none = the paper's 1/(N+1))"


@dataclass(frozen=True)
class NeFTOVFOptions(MethodOptions):
    """Options of NeFT-OVF (Algorithm 1)."""

    n_feedback: int = option(3, "number N of oriented forwards (paper: 3)", minimum=1)
    delta_sigma: float = option(
        0.05, "oriented-noise step in the family's units: sigma_d (Gaussian), s (log-normal), eta (additive)"
    )
    beta: float = option(0.1, "feedback weight (paper grid 1e-1..1e-4; 1e-1 is the paper's OVF choice)")
    relative_delta: float = option(
        0.25,
        "step for profiles without a scalar sigma: factor 1 + n*relative_delta "
        "(0.25 = the paper's 0.05 at sigma_d = 0.2)",
    )
    sigma: float | None = option(None, "base sigma the factors are formed from (none = the noise's own magnitude)")
    a_b: float | None = option(None, _A_B_HELP)
    a_f: float | None = option(None, _A_F_HELP)


@METHODS.register("neft_ovf")
class NeFTOVF(TrainingMethod[NeFTOVFOptions]):
    """NeFT-OVF: one backbone forward at the device noise plus N oriented forwards at sigma + n*delta_sigma.

    Every forward draws fresh noise on all Conv/Linear weights (functional_call, so residual blocks
    are covered). A measured profile has no scalar sigma, so its oriented factors are 1 + n*relative_delta.
    Paper vs common sense: a_b = 1/(N+1) divides the backbone logits by N+1, which acts like a softmax
    temperature N+1 in the cross-entropy, so OVF converges more slowly: on digits it trails vanilla
    after 20 epochs and beats it after 60 (benchmarks/methods_digits.py trains every method 60 epochs).
    Common-sense deviation: the oriented forwards leave BatchNorm running statistics untouched (the
    paper's code path would update them N+1 times per batch with increasingly noisy weights).
    """

    name = "neft_ovf"
    Options = NeFTOVFOptions

    def prepare(self, ctx: TrainContext) -> None:
        noise = require_noise(ctx, self.name)
        o = self.options
        self.n = o.n_feedback
        self.beta = o.beta
        self.factors = oriented_factors(noise, self.n, o.delta_sigma, o.relative_delta, o.sigma)
        if any(f <= 0 for f in self.factors):
            raise ValueError(f"method {self.name!r}: oriented noise scales must be > 0, got {self.factors}")
        self.oriented = [noise.scaled(f) for f in self.factors]
        self.gammas = ovf_gammas(self.n)
        self.a_b, self.a_f = o.a_b, o.a_f

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        model = ctx.raw_model
        w = clean_weights(model)
        out_b = forward_with_weights(model, x, require_noise(ctx, self.name).sample(w, ctx.generator))
        outs = [
            forward_with_weights(model, x, {**nz.sample(w, ctx.generator), **norm_buffer_copies(model)})
            for nz in self.oriented
        ]
        total = negative_feedback_logits(
            out_b.float(), [o.float() for o in outs], self.beta, self.gammas, self.a_b, self.a_f
        )
        loss = F.cross_entropy(total, y)
        ctx.backward(loss)
        with torch.no_grad():
            ce_b = F.cross_entropy(out_b.float(), y)
        return {"loss": float(loss.detach()), "ce_backbone": float(ce_b)}


class SnapshotHeads(nn.Module):
    """IRS snapshot classifiers: adaptive average pool -> linear(hidden) -> ReLU -> linear(classes) per tap."""

    def __init__(self, channels: Sequence[int], spatial_dims: Sequence[int], num_classes: int, hidden: int) -> None:
        super().__init__()
        heads = []
        for c, sd in zip(channels, spatial_dims):
            pool: nn.Module = {
                0: nn.Identity(),
                1: nn.AdaptiveAvgPool1d(1),
                2: nn.AdaptiveAvgPool2d(1),
                3: nn.AdaptiveAvgPool3d(1),
            }[sd]
            heads.append(
                nn.Sequential(pool, nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
            )
        self.heads = nn.ModuleList(heads)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [h(f) for h, f in zip(self.heads, feats)]


def _contains_conv(m: nn.Module) -> bool:
    return any(isinstance(s, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for s in m.modules())


def candidate_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children, with Sequential containers opened one level (stages of a ResNet, layers of a VGG)."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        subs = list(child.named_children())
        if isinstance(child, nn.Sequential) and len(subs) > 1 and _contains_conv(child):
            out += [(f"{name}.{s}", m) for s, m in subs]
        else:
            out.append((name, child))
    return out


def tap_outputs(model: nn.Module, modules: Sequence[nn.Module], forward) -> tuple[Tensor, list[Tensor]]:
    """Run ``forward()`` with temporary forward hooks recording each module's output (last call wins)."""
    taps: list[Tensor | None] = [None] * len(modules)

    def make(i: int):
        def hook(_m, _inp, out):
            taps[i] = out

        return hook

    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]
    try:
        result = forward()
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, t in enumerate(taps) if not isinstance(t, Tensor)]
    if missing:
        raise ValueError(f"snapshot block(s) {missing} produced no tensor output during the forward pass")
    return result, [t for t in taps if isinstance(t, Tensor)]  # every tap is a tensor: checked above


def find_snapshot_blocks(model: nn.Module, x: Tensor, names: list[str]) -> list[tuple[str, int, int]]:
    """(module name, channels, spatial dims) of the IRS taps: the end of each same-depth conv group.

    NeFT III-C: convolution layers with the same kernel depth form a block; a snapshot sits at the end
    of each block. Without ``names`` the candidates are the model's top-level children (Sequential
    containers opened one level) whose output is a feature map; consecutive candidates with the same
    channel count are merged and the last one is tapped. With ``names`` exactly those modules are tapped.
    """
    mods = dict(model.named_modules())
    if names:
        unknown = [n for n in names if n not in mods]
        if unknown:
            raise ValueError(f"method 'neft_irs': no module named {', '.join(unknown)} in the model")
        cands = [(n, mods[n]) for n in names]
    else:
        cands = candidate_blocks(model)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, outs = tap_outputs(model, [m for _, m in cands], lambda: model(x[:2]))
    finally:
        model.train(was)
    found = []
    for (n, _m), o in zip(cands, outs):
        if names:
            found.append((n, int(o.shape[1]), max(o.dim() - 2, 0)))
        elif o.dim() >= 3:
            found.append((n, int(o.shape[1]), o.dim() - 2))
    if not names:
        merged: list[tuple[str, int, int]] = []
        for f in found:
            if merged and merged[-1][1] == f[1]:
                merged[-1] = f
            else:
                merged.append(f)
        found = merged
    if not found:
        raise ValueError("method 'neft_irs': found no convolutional blocks to snapshot; name them with blocks=a,b,c")
    return found


@dataclass(frozen=True)
class NeFTIRSOptions(MethodOptions):
    """Options of NeFT-IRS (Algorithm 2)."""

    beta: float = option(1e-3, "feedback weight (the paper's IRS choice: 1e-3)")
    blocks: tuple[str, ...] = option(
        (), "comma-separated module names to tap (empty = automatic, the end of each same-depth conv group)"
    )
    hidden: int = option(512, "width of the snapshot classifiers", minimum=1)
    noisy_heads: bool = option(True, "noise on the snapshot weights too (Algorithm 2 line 4)")
    a_b: float | None = option(None, _A_B_HELP)
    a_f: float | None = option(None, _A_F_HELP)


@METHODS.register("neft_irs")
class NeFTIRS(TrainingMethod[NeFTIRSOptions]):
    """NeFT-IRS: snapshot classifiers at the end of each block, noisy like the backbone, removed afterwards.

    Forward hooks tap the block outputs during the noisy backbone forward (the user's model class is
    never modified); the heads live in this method, so ``export_model`` is exactly the backbone.
    gamma_n = 10^(1-n) with n = 1 the shallowest snapshot; N in a_b = a_f = 1/(N+1) is the number of
    snapshots, whose taps ``find_snapshot_blocks`` finds.
    """

    name = "neft_irs"
    Options = NeFTIRSOptions

    def prepare(self, ctx: TrainContext) -> None:
        require_noise(ctx, self.name)
        o = self.options
        self.beta = o.beta
        self.noisy_heads = o.noisy_heads
        model = ctx.raw_model
        self.blocks = find_snapshot_blocks(model, first_batch(ctx), list(o.blocks))
        self.heads = SnapshotHeads(
            [c for _, c, _ in self.blocks], [s for _, _, s in self.blocks], ctx.num_classes, o.hidden
        ).to(ctx.device)
        ctx.add_parameters(self.heads.parameters())
        self.gammas = irs_gammas(len(self.blocks))
        self.a_b, self.a_f = o.a_b, o.a_f

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        model = ctx.raw_model
        mods = dict(model.named_modules())
        w = clean_weights(model)
        noise = require_noise(ctx, self.name)
        noisy = noise.sample(w, ctx.generator)
        out_b, feats = tap_outputs(
            model, [mods[n] for n, _, _ in self.blocks], lambda: forward_with_weights(model, x, noisy)
        )
        hw = clean_weights(self.heads)
        hw_noisy = noise.sample(hw, ctx.generator) if self.noisy_heads else hw
        outs = functional_call(self.heads, hw_noisy, (feats,))
        total = negative_feedback_logits(
            out_b.float(), [o.float() for o in outs], self.beta, self.gammas, self.a_b, self.a_f
        )
        loss = F.cross_entropy(total, y)
        ctx.backward(loss)
        return {"loss": float(loss.detach())}

    def export_model(self, model: nn.Module) -> nn.Module:
        return model

    def state_dict(self) -> dict:
        return {"heads": {k: v.detach().cpu() for k, v in self.heads.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        if "heads" in state:
            self.heads.load_state_dict(state["heads"])
