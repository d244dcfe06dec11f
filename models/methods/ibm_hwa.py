"""IBM-style hardware-aware training (HWA supplement, A.1): FP pre-training, then noisy training through the analog tile."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.analog.context import AnalogTiles
from models.analog.tile import PRESETS, analog_config
from models.methods._util import average_over_ranks, epoch_batches, loader_length, require_noise
from models.methods.base import TrainContext, TrainingMethod
from models.methods.mtrd import kl_teacher_student
from models.methods.options import MethodOptions, option, to_str
from models.methods.registry import METHODS
from models.noise.apply import clean_weights, forward_with_weights

_TINY = 1e-12
_CALIBRATION_BATCHES = 10  # training batches whose layer inputs set the initial input ranges


def column_scales(w: Tensor) -> Tensor:
    """max |W| per output column (dim 0), shaped to broadcast against W: the remapped out-scales gamma_i."""
    m = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp(min=_TINY)
    return m.reshape((w.shape[0],) + (1,) * (w.dim() - 1))


def ramp_factor(step: int, ramp_batches: int) -> float:
    """Linear ramp of the injected noise strength over the first ``ramp_batches`` batches (1 afterwards)."""
    return 1.0 if ramp_batches <= 0 else min(1.0, (step + 1) / ramp_batches)


def lr_factor(epoch: int, epochs: int, steps: tuple[float, ...], decay: float) -> float:
    """The step schedule's LR multiplier in ``epoch`` (0-based): ``decay`` per step fraction of ``epochs`` passed."""
    return decay ** sum(1 for s in steps if epoch >= round(s * epochs))


def _analog_name(value: Any) -> str:
    s = to_str(value).strip().lower()
    if s != "none" and s not in PRESETS:
        raise ValueError(f"must be 'none' or a tile preset ({', '.join(PRESETS)}), got {value!r}")
    return s


def _steps(value: Any) -> tuple[float, ...]:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return ()
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(float(v) for v in items if str(v).strip())
    except (TypeError, ValueError):
        raise ValueError(f"must be comma-separated fractions of the epochs, got {value!r}") from None
    if any(not 0.0 < s < 1.0 for s in out):
        raise ValueError(f"must be fractions of the epochs strictly between 0 and 1, got {value!r}")
    return out


@dataclass(frozen=True)
class IBMHWAOptions(MethodOptions):
    """Options of IBM-style hardware-aware training (HWA supplement, A.1 and Table 3)."""

    noise_scale: float = option(
        1.0,
        "injected weight noise = noise_scale x the deployment noise (the run's noise); Table 3's 3 is of PCM "
        "noise at 20 s, about 2.3x its 1-day error",
    )
    ramp_batches: int | None = option(None, "batches of the linear noise ramp-up (none = one epoch, A.1.7)", minimum=0)
    remap_every: int | None = option(
        None, "batches between remappings of gamma to max|W| (none = one epoch)", minimum=0
    )
    drop_connect: float = option(0.001, "probability of setting a weight to g_min = 0 (0.1 %, A.1.7 and Table 3)")
    clip: bool = option(True, "fixed-value clipping |W_hat| <= 1")
    learn_out_scales: bool = option(True, "train the per-column out-scales gamma too")
    distill: bool = option(
        False, "add KL(teacher || noisy student) from a floating-point teacher (off in A.1.7's final results)"
    )
    distill_weight: float = option(1.0, "weight of the distillation term")
    temperature: float = option(1.0, "distillation temperature")
    teacher: str | None = option(None, "model.pt of the floating-point teacher (none = the model after pre-training)")
    pretrain_epochs: int | None = option(
        None,
        "epochs of floating-point training before HWA (the supplement starts from a converged FP model; "
        "none = half the run's epochs, at least 1; 0 = HWA from the initial weights)",
        minimum=0,
    )
    analog: str = option(
        "ibm_table1",
        "tile preset of the training forward (DAC/ADC, output noise and bound, learned input range, per-MVM "
        "weight noise, tiles; IR drop off, A.1.7), or none for a digital forward",
        parse=_analog_name,
        kind="preset|none",
    )
    weight_decay: float | None = option(
        1e-3, "L2 weight decay of the weights during HWA (Table 3: 1e-3 for the CIFAR CNNs; none = --weight-decay)"
    )
    momentum: float | None = option(
        0.9, "SGD momentum during HWA when the run uses --optimizer sgd (Table 3: 0.9); none = --momentum"
    )
    lr_steps: tuple[float, ...] = option(
        (0.5,),
        "fractions of the HWA epochs at which the LR is multiplied by lr_decay (Table 3: 1-3 steps)",
        parse=_steps,
        kind="float,...",
    )
    lr_decay: float = option(0.1, "LR factor of each step (Table 3 runs: 10x reductions)")
    grad_clip: float | None = option(
        None, "maximum gradient norm (Table 3: 5-10 for LSTMs and transformers, none for the CNNs)"
    )


@METHODS.register("ibm_hwa")
class IBMHWA(TrainingMethod[IBMHWAOptions]):
    """Hardware-aware training as in the IBM AIMC study: FP pre-training, then noisy training through the analog tile.

    The model first trains in floating point for ``pretrain_epochs`` (the supplement fine-tunes a trained FP
    model). HWA then writes W = diag(gamma) * W_hat with per-column out-scales; per batch the
    conductance-normalised weights W_hat (|W_hat| <= 1 by fixed-value clipping) get drop-connect (a weight
    set to g_min = 0 with probability ``drop_connect``) and the deployment noise (the run's noise) scaled by
    ``noise_scale``, linearly ramped up over ``ramp_batches``; the effective weights gamma * (W_hat + noise)
    run through the ``analog`` tile forward (models.analog: DAC/ADC, output noise and bound, per-MVM weight
    noise, tiles; IR drop and drift compensation off in training, A.1.7). Its input ranges start at
    ``input_range_std`` standard deviations of each layer's input on the FP model (first 10 training batches)
    and are learned with the weights. Every ``remap_every`` batches gamma is reset to the column's max |W|;
    with ``learn_out_scales`` gamma is trained, its update folded into W so that W_hat stays what the
    optimizer made it. Table 3's recipe is applied to the run's optimizer: L2 ``weight_decay`` on the
    weights, SGD ``momentum`` (with --optimizer sgd), the LR times ``lr_decay`` at each of ``lr_steps``
    (multiplying whatever --scheduler does; --scheduler none gives the paper's pure steps) and
    ``grad_clip`` on the gradient norm just before each step. ``distill`` adds KL(teacher || noisy student)
    from the FP model (``teacher`` = model.pt, or the pre-trained model).
    Reading of "noise": Table 3's scales (1-5, 3 for the CNNs) multiply the PCM noise at t = 20 s without
    drift, while evaluation is at 1 h to 1 y after drift and global compensation; with the supplement's PCM
    model (aihwkit PCMLikeNoiseModel, column max |W| at g_max) 3 x sigma(20 s) is 2.6x, 2.3x and 1.8x the rms
    weight error at 1 h, 1 d and 1 y. Here the run's noise already is the deployment noise, and the tile adds
    the deployment IO noise, so ``noise_scale`` = 1 trains on the deployment model itself (A.1.8's choice).
    Measured on digits (small CNN, 2 FP + 4 or 6 HWA epochs): at sigma_d = 0.3 (weight std 0.23 max|W|) 2x
    cost 6-13 points of clean accuracy and 3x 16-64, while at sigma_d = 0.1 scales 1-3 end within a point of
    each other on the tiles; 1 is the default, 2-3 the paper-like setting for a mild deployment noise.
    Pre-training: None = half the run's epochs (at least 1) of Adam at the run's LR before the HWA epochs.
    The learned input ranges are saved in the method state (``train_state.method.input_ranges``) for an
    analog evaluation of the model.
    """

    name = "ibm_hwa"
    Options = IBMHWAOptions

    def prepare(self, ctx: TrainContext) -> None:
        noise = require_noise(ctx, self.name)
        o = self.options
        n = self.name
        self.noise = noise.scaled(o.noise_scale)
        per_epoch = loader_length(ctx.train_loader)
        self.ramp = per_epoch if o.ramp_batches is None else o.ramp_batches
        self.remap = per_epoch if o.remap_every is None else o.remap_every
        self.p_drop = o.drop_connect
        if not 0.0 <= self.p_drop < 1.0:
            raise ValueError(f"method {n!r}: drop_connect must be in [0, 1), got {self.p_drop}")
        if not 0.0 < o.lr_decay <= 1.0:
            raise ValueError(f"method {n!r}: lr_decay must be in (0, 1], got {o.lr_decay}")
        if o.grad_clip is not None and not o.grad_clip > 0:
            raise ValueError(f"method {n!r}: grad_clip must be > 0 (or none), got {o.grad_clip}")
        self.clip = o.clip
        self.learn = o.learn_out_scales
        self.distill = o.distill
        self.distill_weight = o.distill_weight
        self.temperature = o.temperature
        model = ctx.raw_model
        pre = max(1, ctx.config.epochs // 2) if o.pretrain_epochs is None else o.pretrain_epochs
        self.pretrain_epochs = pre
        if pre > 0 and not ctx.resuming:
            self._pretrain(ctx, pre)
        self.teacher: nn.Module | None = None
        if self.distill:
            if o.teacher:
                from models.checkpoint import load_teacher

                self.teacher, _ = load_teacher(o.teacher, ctx.device, ctx.config.model)
            elif pre > 0:
                self.teacher = copy.deepcopy(model).eval()
            else:
                raise ValueError(
                    f"method {n!r}: distill needs a floating-point teacher (teacher=model.pt or pretrain_epochs>0)"
                )
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        w = clean_weights(model)
        self.gamma = {k: nn.Parameter(column_scales(v)) for k, v in w.items()}
        self._gamma_prev = {k: g.detach().clone() for k, g in self.gamma.items()}
        self._tune_optimizer(ctx, set(map(id, w.values())))
        if self.learn:
            ctx.add_parameters(self.gamma.values(), weight_decay=0.0)
        self.tiles: AnalogTiles | None = None
        if o.analog != "none":
            cfg = analog_config(o.analog).for_training()
            batches = [x for _, (x, _y) in zip(range(_CALIBRATION_BATCHES), epoch_batches(ctx.train_loader, 0))]
            self.tiles = AnalogTiles(model, cfg, calibration=batches if cfg.input_range else None)
            average_over_ranks(ctx, self.tiles.parameters())  # each rank calibrated on its own shard
            ctx.add_parameters(self.tiles.parameters(), weight_decay=0.0)
        self._lr_factor = 1.0
        self._clip_hook = None
        if o.grad_clip is not None:
            params = [p for grp in ctx.optimizer.param_groups for p in grp["params"]]
            limit = float(o.grad_clip)

            def clip_before_step(_opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], limit)

            self._clip_hook = ctx.optimizer.register_step_pre_hook(clip_before_step)

    def _tune_optimizer(self, ctx: TrainContext, weight_ids: set[int]) -> None:
        """Table 3's weight decay (on the Conv/Linear weights) and SGD momentum in the run's optimizer."""
        o = self.options
        sgd = isinstance(ctx.optimizer, torch.optim.SGD)
        groups = list(ctx.optimizer.param_groups)
        for grp in groups:
            if o.momentum is not None and sgd:
                grp["momentum"] = o.momentum
        if o.weight_decay is None:
            return
        for grp in groups:
            mine = [p for p in grp["params"] if id(p) in weight_ids]
            if not mine:
                continue
            rest = [p for p in grp["params"] if id(p) not in weight_ids]
            grp["params"] = rest
            extra = {k: v for k, v in grp.items() if k != "params"}
            extra["weight_decay"] = o.weight_decay
            ctx.optimizer.add_param_group({"params": mine, **extra})
        ctx.optimizer.param_groups[:] = [g for g in ctx.optimizer.param_groups if g["params"]]

    def _pretrain(self, ctx: TrainContext, epochs: int) -> None:
        """Plain floating-point training of the model in place (the FP starting point of HWA training).

        Under data parallelism the gradients are averaged over the ranks at every step and the normalisation
        statistics at the end, as the loop does, so every rank starts HWA from the same model.
        """
        model = ctx.raw_model
        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=ctx.config.lr)
        model.train()
        for ep in range(epochs):
            for x, y in epoch_batches(ctx.train_loader, ep):
                opt.zero_grad(set_to_none=True)
                with ctx.autocast():
                    loss = F.cross_entropy(model(x).float(), y)
                loss.backward()
                average_over_ranks(ctx, [p.grad for p in params if p.grad is not None])
                opt.step()
        average_over_ranks(ctx, [b for b in model.buffers() if b.is_floating_point()])

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """The step schedule: the LR of every group moves to base x lr_decay^(steps passed)."""
        f = lr_factor(ctx.epoch, ctx.config.epochs, self.options.lr_steps, self.options.lr_decay)
        if f != self._lr_factor:
            for grp in ctx.optimizer.param_groups:
                grp["lr"] *= f / self._lr_factor
            self._lr_factor = f

    @torch.no_grad()
    def _sync(self, model: nn.Module, step: int | None) -> None:
        """Fold learned gamma updates into W, remap when due, then clip |W| <= gamma (|W_hat| <= 1)."""
        w = clean_weights(model)
        for k, wt in w.items():
            g = self.gamma[k]
            g.clamp_(min=_TINY)
            if self.learn:
                wt.mul_(g / self._gamma_prev[k])
            if step is not None and step > 0 and self.remap > 0 and step % self.remap == 0:
                g.copy_(column_scales(wt))
            if self.clip:
                wt.copy_(torch.maximum(torch.minimum(wt, g), -g))
            self._gamma_prev[k] = g.detach().clone()
        if self.tiles is not None:
            self.tiles.clamp_ranges()

    def effective_weights(self, ctx: TrainContext, w: dict[str, Tensor]) -> dict[str, Tensor]:
        """gamma * (drop(W_hat) + ramp * noise / gamma) per layer (value: drop(W) + ramped noise)."""
        r = ramp_factor(ctx.step, self.ramp)
        wd = {k: v.detach() for k, v in w.items()}
        noisy = self.noise.sample(wd, ctx.generator)
        out = {}
        for k, v in w.items():
            g = self.gamma[k]
            w_hat = v / g.detach()
            if self.p_drop > 0:
                keep = torch.rand(v.shape, generator=ctx.generator, device=v.device, dtype=v.dtype) >= self.p_drop
                w_hat = w_hat * keep
            n_hat = r * (noisy[k] - wd[k]) / g.detach()
            out[k] = g * (w_hat + n_hat)
        return out

    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        model = ctx.raw_model
        self._sync(model, ctx.step)
        w = clean_weights(model)
        eff = self.effective_weights(ctx, w)
        if self.tiles is not None:
            self.tiles.generator = ctx.generator
            with self.tiles:
                out = forward_with_weights(model, x, eff).float()
        else:
            out = forward_with_weights(model, x, eff).float()
        ce = F.cross_entropy(out, y)
        loss = ce
        logs = {"ramp": ramp_factor(ctx.step, self.ramp)}
        if self.teacher is not None:
            with torch.no_grad():
                t = self.teacher(x)
            kd = kl_teacher_student(t, out, self.temperature).mean()
            loss = ce + self.distill_weight * kd
            logs["kd"] = float(kd.detach())
        ctx.backward(loss)
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), **logs}

    def export_model(self, model: nn.Module) -> nn.Module:
        self._sync(model, None)
        return model

    def state_dict(self) -> dict:
        state: dict[str, Any] = {
            "gamma": {k: g.detach().cpu() for k, g in self.gamma.items()},
            "lr_factor": self._lr_factor,
        }
        if self.tiles is not None:
            state["input_ranges"] = self.tiles.input_range_state()
            state["analog"] = self.options.analog
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, g in state.get("gamma", {}).items():
                self.gamma[k].copy_(g.to(self.gamma[k].device))
                self._gamma_prev[k] = self.gamma[k].detach().clone()
        self._lr_factor = float(state.get("lr_factor", 1.0))
        if self.tiles is not None and "input_ranges" in state:
            self.tiles.load_input_ranges(state["input_ranges"])
