"""The training loop: one loop for every method plugin, single process or data-parallel under torchrun.

Honest evaluation: the per-epoch validation (history ``val_*``, ``ctx.val_loader``) reads a seeded,
class-stratified validation split carved from the training split (``TrainConfig.val_fraction``); the
test split is read once, after the last planned epoch, for ``TrainResult.test``.

Data parallelism: the model is wrapped in DistributedDataParallel (which broadcasts rank 0's initial
weights); forwards use the unwrapped module and the loop averages all gradients in one flat
all-reduce before each optimizer step, so a method may run any number of forward/backward passes
per step (SAM-style, several noisy forwards, auxiliary heads) without DDP's one-forward-one-backward rule.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from firmware_protocol.progress import Progress
from models.architectures import build_model
from models.checkpoint import check_state_dict, load_checkpoint, model_record, save_checkpoint
from models.config import LEGACY_DEFAULTS, TrainConfig
from models.data import Dataset, load_dataset
from models.methods.base import TrainContext, TrainingMethod
from models.methods.registry import get_method
from models.montecarlo import evaluate_mc
from models.noise.factory import noise_from_spec
from models.optim import average_gradients, make_optimizer

__all__ = ["TrainConfig", "TrainContext", "TrainResult", "train", "resolve_device", "init_distributed"]


@dataclass
class TrainResult:
    """What a run produced: the exported model, the per-epoch (validation) history, the checkpoint dict, the test result.

    ``test`` holds ``test_acc`` (clean) and, with noise and ``val_noise_draws`` >= 1, ``test_noisy_acc``
    and ``test_noisy_std`` over that many draws; None when the run stopped before its planned epochs or
    was asked not to read the test split.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    checkpoint: dict[str, Any] = field(repr=False)
    test: dict[str, float] | None = None


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA (this process's local GPU) when present, else CPU; explicit names are checked."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device_spec: str = "auto") -> tuple[int, int, int]:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs): (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _batches(
    x: Tensor, y: Tensor, batch_size: int, seed: int, epoch: int, rank: int, world: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled global batches (same permutation on every rank), each split evenly over the ranks."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(len(x), generator=g)
    for start in range(0, len(x), batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) < world or len(idx) % world:
            idx = idx[: len(idx) - len(idx) % world]
            if len(idx) == 0:
                continue
        shard = idx.view(world, -1)[rank]
        yield x[shard].to(device, non_blocking=True), y[shard].to(device, non_blocking=True)


def _n_batches(n: int, batch_size: int, world: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world else 0)


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int = 1):
    """Per-step LR schedule: cosine over the run, none, or "step:E:G" (x G every E epochs, DAT's x0.8 per 10)."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler.startswith("step:"):
        every, gamma = parse_step_schedule(cfg.scheduler)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, every * steps_per_epoch), gamma=gamma)
    raise ValueError(f"unknown scheduler {cfg.scheduler!r} (cosine, none, step:EPOCHS:GAMMA)")


def parse_step_schedule(text: str) -> tuple[int, float]:
    """(epochs, gamma) of "step:EPOCHS:GAMMA" (the LR times GAMMA every EPOCHS epochs); one-line ValueError."""
    parts = text.split(":")
    try:
        if len(parts) != 3 or parts[0] != "step":
            raise ValueError
        every, gamma = int(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"scheduler {text!r}: write step:EPOCHS:GAMMA, e.g. step:10:0.8") from None
    if every < 1 or not 0 < gamma <= 1:
        raise ValueError(f"scheduler {text!r}: EPOCHS must be >= 1 and GAMMA in (0, 1]")
    return every, gamma


def _amp(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """bf16 autocast on GPUs that support it, else fp16 with a GradScaler; nothing on CPU."""
    if not cfg.amp or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _accumulated_step(
    method: TrainingMethod[Any],
    ctx: TrainContext,
    x: Tensor,
    y: Tensor,
    parts: int,
    sync_off: Callable[[], contextlib.AbstractContextManager[Any]],
    params: list[nn.Parameter],
) -> dict[str, float]:
    """One optimizer step's gradients from `parts` equal contiguous sub-batches, summed then averaged.

    The sum-then-divide order is the one `models.optim.average_gradients` uses across processes, so one process with
    accumulate=k and k processes with accumulate=1 compute bit-identical gradients.
    """
    if parts <= 1:
        with sync_off(), ctx.autocast():
            return method.training_step(ctx, x, y)
    if len(x) % parts:
        raise ValueError(f"a batch of {len(x)} samples does not split into {parts} equal sub-batches (accumulate)")
    sums: dict[str, float] = {}
    for xs, ys in zip(x.chunk(parts), y.chunk(parts)):
        with sync_off(), ctx.autocast():
            logs = method.training_step(ctx, xs, ys)
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    for p in params:
        if p.grad is not None:
            p.grad /= parts
    return {k: v / parts for k, v in sums.items()}


def _average_buffers(model: nn.Module, world: int) -> None:
    """Average floating buffers (BatchNorm running stats) over the ranks."""
    if world <= 1:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= world


def _rng_state(ctx: TrainContext) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "noise": ctx.generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def train(
    config: TrainConfig,
    *,
    dataset: Dataset | None = None,
    resume: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` with ``config.method``; checkpoint every epoch when asked.

    The training split loses ``config.val_fraction`` of its samples to the validation split
    (`Dataset.with_validation`, seeded by ``config.seed``); a ``dataset`` that already has one is used as
    given. ``evaluate_test`` False leaves the test split unread (a caller that still has choices to make).
    ``resume`` continues from a checkpoint written by this function (its config must match in
    everything but ``epochs``; a longer run stretches the cosine schedule over the new total).
    ``stop_after`` ends this call after that many epochs (a time-boxed job that a later call resumes).
    Returns the exported model (``method.export_model``) and the history.
    """
    rank, world, local_rank = init_distributed(config.device)
    device = resolve_device(config.device, local_rank)
    say = (log or print) if rank == 0 else (lambda _s: None)
    seed_everything(config.seed)

    ds = dataset if dataset is not None else load_dataset(config.data, config.data_root)
    if ds.x_val is None:
        ds = ds.with_validation(config.val_fraction, config.seed)
    _check_input_kind(config, ds)
    if config.analog is not None and config.method == "ibm_hwa":  # refused before any training (its pre-training)
        raise ValueError("ibm_hwa trains on its own analog tiles (its option analog=PRESET): leave --analog out")
    _check_model_size(config, ds, device)
    model = build_model(
        config.model,
        in_channels=ds.in_channels,
        num_classes=ds.num_classes,
        image_size=ds.image_size,
        **config.model_kwargs,
    ).to(device)
    noise = noise_from_spec(config.noise)
    method: TrainingMethod = get_method(config.method, **config.method_options)
    ckpt_in = load_checkpoint(resume) if resume is not None else None
    if ckpt_in is not None:
        _check_resume(config, ckpt_in)
        check_state_dict(model, ckpt_in["train_state"].get("model") or {}, f"{resume}: {config.model}")
        model.load_state_dict(ckpt_in["train_state"]["model"])

    wrapped: nn.Module = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = make_optimizer(config, model.parameters())
    amp_dtype, scaler = _amp(config, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed * 7919 + 104_729 * rank + 1)
    ctx = TrainContext(
        model=wrapped,
        noise=noise,
        optimizer=optimizer,
        device=device,
        generator=gen,
        config=config,
        num_classes=ds.num_classes,
        train_loader=None,
        val_loader=None,
        scaler=scaler,
        amp_dtype=amp_dtype,
        rank=rank,
        world_size=world,
        resuming=ckpt_in is not None,
    )
    ctx.train_loader = _Loader(ds.x_train, ds.y_train, config, ctx)
    ctx.val_loader = [(ds.x_val, ds.y_val)] if ds.x_val is not None and ds.y_val is not None else None
    method.prepare(ctx)
    tiles = _training_tiles(config, model, ctx)
    steps_per_epoch = _n_batches(len(ds.x_train), config.batch_size, world)
    scheduler = _make_scheduler(config, optimizer, steps_per_epoch * config.epochs, steps_per_epoch)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if ckpt_in is not None:
        st = ckpt_in["train_state"]
        optimizer.load_state_dict(st["optimizer"])
        if scheduler is not None and st.get("scheduler") is not None:
            scheduler.load_state_dict(st["scheduler"])
            if hasattr(scheduler, "T_max"):
                scheduler.T_max = max(1, steps_per_epoch * config.epochs)
        if scaler is not None and st.get("scaler") is not None:
            scaler.load_state_dict(st["scaler"])
        method.load_state_dict(st.get("method", {}))
        if tiles is not None:
            tiles.load_input_ranges((st.get("analog") or {}).get("input_ranges") or {})
        start_epoch, ctx.step = int(st["epoch"]), int(st["step"])
        history = list(ckpt_in.get("history", []))
        torch.set_rng_state(st["rng"]["torch"])
        if st["rng"].get("noise") is not None and rank == 0:
            gen.set_state(st["rng"]["noise"])
        say(f"resumed from {resume} at epoch {start_epoch}")

    params = [p for grp in optimizer.param_groups for p in grp["params"]]
    # gradients are averaged by models.optim.average_gradients; DDP's own hooks stay off even if a method calls ctx.model
    sync_off = wrapped.no_sync if isinstance(wrapped, nn.parallel.DistributedDataParallel) else contextlib.nullcontext
    ckpt: dict[str, Any] = {}
    end_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + max(0, stop_after))
    for epoch in range(start_epoch, end_epoch):
        ctx.epoch = epoch
        method.on_epoch_start(ctx)
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        nb = 0
        for x, y in ctx.train_loader.epoch(epoch):
            optimizer.zero_grad(set_to_none=True)
            with tiles if tiles is not None else contextlib.nullcontext():  # every method's forwards on the tiles
                logs = _accumulated_step(method, ctx, x, y, config.accumulate, sync_off, params)
            average_gradients(params, world)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if tiles is not None:
                tiles.clamp_ranges()
            ctx.step += 1
            nb += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        _average_buffers(model, world)
        entry: dict[str, Any] = {"epoch": epoch + 1, **{k: v / max(nb, 1) for k, v in sums.items()}}
        entry.update(_validate(method.export_model(model), ds, noise, config, device))
        entry["time_s"] = time.perf_counter() - t0
        history.append(entry)
        say(_format_entry(entry, config.epochs))
        ckpt = _make_checkpoint(config, ds, model, method, optimizer, scheduler, scaler, ctx, history, epoch + 1)
        if tiles is not None:  # the learned input ranges, which `rram evaluate --analog` and a resume take
            ckpt["train_state"]["analog"] = {"preset": config.analog, "input_ranges": tiles.input_range_state()}
        if config.checkpoint and rank == 0:
            save_checkpoint(ckpt, config.checkpoint)
    if not ckpt:
        ckpt = _make_checkpoint(config, ds, model, method, optimizer, scheduler, scaler, ctx, history, start_epoch)
    exported = method.export_model(model)
    finished = end_epoch >= config.epochs
    test = _evaluate_test(exported, ds, noise, config, device) if finished and evaluate_test else None
    return TrainResult(model=exported, history=history, checkpoint=ckpt, test=test)


_IMAGE_MODELS = ("cnn", "vgg8", "resnet18")


def _check_input_kind(config: TrainConfig, ds: Dataset) -> None:
    """Refuse (one-line ValueError) a convolutional network on 1-D signals, naming the network that takes them."""
    if config.model in _IMAGE_MODELS and ds.image_size == 1:
        raise ValueError(
            f"dataset {ds.name!r} holds 1-D signals of {ds.in_channels} values, not images, so the "
            f"{config.model} cannot take it: train an mlp (--model mlp)"
        )


def _memory_bytes(device: torch.device) -> int:
    """The memory of the device the model trains on (the GPU's, or this machine's RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _check_model_size(config: TrainConfig, ds: Dataset, device: torch.device) -> None:
    """Refuse (one-line ValueError) a network whose weights, gradients and two optimizer moments cannot fit memory.

    Counted on the meta device, so nothing is allocated; a user factory that cannot build there is not checked.
    """
    dims = {"in_channels": ds.in_channels, "num_classes": ds.num_classes, "image_size": ds.image_size}
    try:
        with torch.device("meta"):
            skeleton = build_model(config.model, **dims, **config.model_kwargs)
    except ValueError:
        raise
    except Exception:  # a user factory that needs real tensors: built for real below, as the user asked
        return
    tensors = skeleton.state_dict().values()
    n_values = sum(t.numel() for t in tensors)
    n_bytes = sum(t.numel() * t.element_size() for t in tensors)
    memory = _memory_bytes(device)
    if 4 * n_bytes > memory:
        raise ValueError(
            f"model {config.model} with {config.model_kwargs or 'its default arguments'} has "
            f"{n_values:.3g} weights ({n_bytes / 2**30:.3g} GiB; training needs about 4x that), more than "
            f"the {memory / 2**30:.0f} GiB of memory on {device}: choose smaller --model-arg values"
        )


class _Loader:
    """Iterates the rank's shard of shuffled global batches (deterministic in seed and epoch)."""

    def __init__(self, x: Tensor, y: Tensor, cfg: TrainConfig, ctx: TrainContext) -> None:
        self.x, self.y, self.cfg, self.ctx = x, y, cfg, ctx
        if cfg.accumulate < 1:
            raise ValueError(f"accumulate must be a positive number of sub-batches, got {cfg.accumulate}")
        if cfg.batch_size < ctx.world_size:
            raise ValueError(f"batch size {cfg.batch_size} is smaller than the number of processes {ctx.world_size}")

    def epoch(self, epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        it: Iterable[tuple[Tensor, Tensor]] = _batches(
            self.x,
            self.y,
            self.cfg.batch_size,
            self.cfg.seed,
            epoch,
            self.ctx.rank,
            self.ctx.world_size,
            self.ctx.device,
        )
        if self.cfg.progress and self.ctx.rank == 0:
            # a bar with ETA on a terminal; in a pipe or log the caller's line per epoch is the only output
            total = _n_batches(len(self.x), self.cfg.batch_size, self.ctx.world_size)
            it = Progress(total, f"epoch {epoch + 1}/{self.cfg.epochs}", "batch", final_line=False).wrap(it)
        return it

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.epoch(self.ctx.epoch))

    def __len__(self) -> int:
        return _n_batches(len(self.x), self.cfg.batch_size, self.ctx.world_size)


def _accuracies(
    model: nn.Module, x: Tensor, y: Tensor, noise, cfg: TrainConfig, device: torch.device, prefix: str, seed: int
) -> dict[str, float]:
    """``{prefix}_acc`` (clean) and, with noise, ``{prefix}_noisy_acc`` / ``_noisy_std`` (draws split over the ranks)."""
    if noise is None or cfg.val_noise_draws < 1:
        r = evaluate_mc(model, x, y, None, 1, device=device, distributed=False)
        assert r.clean_accuracy is not None  # evaluate_mc measures it unless called with clean=False
        return {f"{prefix}_acc": r.clean_accuracy}
    r = evaluate_mc(model, x, y, noise, cfg.val_noise_draws, seed=seed, device=device)
    assert r.clean_accuracy is not None
    return {f"{prefix}_acc": r.clean_accuracy, f"{prefix}_noisy_acc": r.mean, f"{prefix}_noisy_std": r.std}


def _validate(model: nn.Module, ds: Dataset, noise, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Clean and noisy accuracy on the validation split; nothing when there is none (val_fraction 0)."""
    if ds.x_val is None or ds.y_val is None:
        return {}
    return _accuracies(model, ds.x_val, ds.y_val, noise, cfg, device, "val", cfg.seed + 12345)


def _evaluate_test(model: nn.Module, ds: Dataset, noise, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """The one evaluation of the test split, after training: clean and noisy accuracy (own noise seed)."""
    return _accuracies(model, ds.x_test, ds.y_test, noise, cfg, device, "test", cfg.seed + 23456)


def _format_entry(e: dict[str, Any], epochs: int) -> str:
    """One plain line per epoch: the method's losses, accuracies in %, the epoch's time in s."""
    parts = [f"epoch {e['epoch']}/{epochs}"]
    for k, v in e.items():
        if k == "epoch" or not isinstance(v, float) or not math.isfinite(v):
            continue
        if k == "time_s":
            parts.append(f"time {v:.1f} s")
        elif k.startswith("val_"):
            parts.append(f"{k} {100 * v:.2f} %")
        else:
            parts.append(f"{k} {v:.4f}")
    return "  ".join(parts)


def _training_tiles(config: TrainConfig, model: nn.Module, ctx: TrainContext) -> Any:
    """Analog tiles every method's forward runs through (``config.analog``), input ranges calibrated and trained.

    The ranges start at the preset's multiple of each layer's input std over the first training batches (averaged
    over the ranks) and join the optimizer without weight decay; validation and the final test stay digital, and
    `rram evaluate --analog` judges the model on the full tile (IR drop, drift compensation) with these ranges.
    """
    if config.analog is None:
        return None
    from models.analog import AnalogTiles, analog_config
    from models.methods._util import average_over_ranks, epoch_batches

    tile = analog_config(config.analog).for_training()
    batches = [x for _, (x, _y) in zip(range(10), epoch_batches(ctx.train_loader, 0))]
    tiles = AnalogTiles(model, tile, calibration=batches if tile.input_range else None)
    average_over_ranks(ctx, tiles.parameters())  # each rank calibrated on its own shard
    ctx.add_parameters(tiles.parameters(), weight_decay=0.0)
    tiles.generator = ctx.generator
    return tiles


def _make_checkpoint(cfg, ds, model, method, optimizer, scheduler, scaler, ctx, history, epochs_done) -> dict[str, Any]:
    exported = method.export_model(model)
    rec = model_record(cfg, ds, exported)
    rec["history"] = history
    rec["train_state"] = {
        "epoch": epochs_done,
        "step": ctx.step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "method": method.state_dict(),
        "rng": _rng_state(ctx),
    }
    return rec


_RESUME_FREE = {"epochs", "checkpoint", "progress", "device"}


def _check_resume(cfg: TrainConfig, ckpt: dict[str, Any]) -> None:
    from models.noise.factory import pin_conventions

    old = {**LEGACY_DEFAULTS, **ckpt.get("config", {})}
    old["noise"] = pin_conventions(old.get("noise"), legacy=True)  # as load_checkpoint reads a stored spec
    new = {**cfg.to_dict(), "noise": pin_conventions(cfg.noise)}  # the spec's defaults written out, as stored
    diff = sorted(k for k, v in new.items() if k not in _RESUME_FREE and old.get(k) != v)
    if diff:
        raise ValueError(f"cannot resume: the checkpoint was trained with different {', '.join(diff)}")
    if "train_state" not in ckpt:
        raise ValueError("cannot resume: the checkpoint holds no training state")
    missing = sorted({"epoch", "step", "model", "optimizer", "rng"} - set(ckpt["train_state"]))
    if missing:
        raise ValueError(f"cannot resume: the checkpoint's training state lacks {', '.join(missing)}")
