"""Training overhead of each robust method against vanilla: per epoch after warm-up, interleaved, allocator peak memory.

Every method trains its own copy of the same network (same seed, data and batch order) in this one process.
Each is warmed up first (``--warmup`` epochs, untimed: torch's lazy imports, the optimizer's first step and the
allocator's growth land there, not in the figures). Then ``--rounds`` rounds: in each, one epoch of vanilla and
one of every other method, in an order that alternates between rounds (vanilla first, then last), so a drift of
the machine's speed hits both sides of a ratio alike. A method's ratio is taken per round (its epoch time over
that round's vanilla epoch) and reported as the min and the median over rounds, both for wall time and for this
process's CPU time (with one thread the CPU time is the steadier one on a shared machine).

Peak memory is the allocator's, during one more epoch per method after the timed rounds: on CUDA
``torch.cuda.max_memory_allocated`` above the epoch's start; on the CPU (torch 2.13 has no peak statistic for
its CPU allocator) the highest running total of the allocations and frees that ``torch.profiler`` records with
``profile_memory=True`` over the epoch, i.e. the peak of tensor bytes held above the epoch's start. Both count
tensors only (activations, gradients, optimizer state, a method's buffers), not the interpreter or libraries.
The profiled epoch is not timed (the profiler slows it).

    python benchmarks/train_overhead.py                               # digits, small CNN, vanilla vs DAT-Fast/Full
    python benchmarks/train_overhead.py --methods dat,dat_full,noise,neft_ovf --rounds 9
    python benchmarks/train_overhead.py --device cuda --json out.json  # the GPU variant (needs a GPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods_digits import DEFAULT_MODEL_ARGS, METHODS  # the same method labels and network


def pick_device(requested: str, cuda_available: bool | None = None) -> torch.device:
    """'auto' -> cuda when a GPU is present, else cpu; 'cuda'/'cuda:N' without one is a one-line ValueError."""
    avail = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "auto":
        return torch.device("cuda" if avail else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested!r}: give auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not avail:
        raise ValueError(f"--device {requested}: no CUDA GPU is visible here; use --device cpu (or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {requested}: this benchmark runs on cpu or cuda only")
    return dev


@dataclass
class Runner:
    """One method's training state, stepped one epoch at a time exactly as models.training.train steps it."""

    label: str
    ctx: Any  # TrainContext
    method: Any  # TrainingMethod
    x: torch.Tensor
    y: torch.Tensor
    epoch: int = 0

    def run_epoch(self) -> None:
        """One epoch of optimizer steps (no validation: that is the same for every method)."""
        from models.training import _accumulated_step, _batches

        ctx, cfg = self.ctx, self.ctx.config
        params = [p for grp in ctx.optimizer.param_groups for p in grp["params"]]
        ctx.epoch = self.epoch
        self.method.on_epoch_start(ctx)
        ctx.model.train()
        for xb, yb in _batches(self.x, self.y, cfg.batch_size, cfg.seed, self.epoch, 0, 1, ctx.device):
            ctx.optimizer.zero_grad(set_to_none=True)
            _accumulated_step(self.method, ctx, xb, yb, 1, _no_sync, params)
            ctx.optimizer.step()
            ctx.step += 1
        self.epoch += 1


def _no_sync() -> Any:
    import contextlib

    return contextlib.nullcontext()


def make_runner(label: str, job: dict[str, Any], device: torch.device) -> Runner:
    """Build the network, noise, method, optimizer and context of one method as ``train`` does (same seeds)."""
    from models.architectures import build_model
    from models.config import TrainConfig
    from models.data import load_dataset
    from models.methods.base import TrainContext
    from models.methods.registry import get_method
    from models.noise.factory import noise_from_spec
    from models.optim import make_optimizer
    from models.training import seed_everything

    name, opts = METHODS[label]
    cfg = TrainConfig(
        model=job["model"],
        model_kwargs=job["model_kwargs"],
        data=job["data"],
        data_root=job["data_dir"],
        method=name,
        method_options={**opts, **job["options"].get(label, {})},
        noise={"family": "gaussian", "sigma": job["train_sigma"]},
        epochs=job["warmup"] + job["rounds"] + 1,
        batch_size=job["batch_size"],
        lr=job["lr"],
        seed=job["seed"],
        device=str(device),
        progress=False,
    )
    seed_everything(cfg.seed)
    ds = load_dataset(cfg.data, cfg.data_root).with_validation(cfg.val_fraction, cfg.seed)
    model: nn.Module = build_model(
        cfg.model, in_channels=ds.in_channels, num_classes=ds.num_classes, image_size=ds.image_size, **cfg.model_kwargs
    ).to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 7919 + 1)
    ctx = TrainContext(
        model=model,
        noise=noise_from_spec(cfg.noise),
        optimizer=make_optimizer(cfg, model.parameters()),
        device=device,
        generator=gen,
        config=cfg,
        num_classes=ds.num_classes,
        val_loader=[(ds.x_val, ds.y_val)] if ds.x_val is not None else None,
    )
    method = get_method(cfg.method, **cfg.method_options)
    method.prepare(ctx)
    return Runner(label, ctx, method, ds.x_train.to(device), ds.y_train.to(device))


@dataclass(frozen=True)
class Timing:
    """One timed epoch: wall seconds and this process's CPU seconds."""

    wall_s: float
    cpu_s: float


def timed(fn: Callable[[], None], device: torch.device) -> Timing:
    """Run ``fn`` and return its wall and CPU time (CUDA synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Timing(time.perf_counter() - w0, time.process_time() - c0)


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak tensor bytes the allocator held above the start while ``fn`` ran (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak = 0
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            peak = max(peak, int(node.extra_fields.total_allocated))
        stack.extend(node.children)
    return peak


def round_orders(labels: list[str], rounds: int) -> list[list[str]]:
    """Per round the order of the epochs: vanilla first in even rounds, last in odd ones (the rest reversed too)."""
    rest = [lab for lab in labels if lab != "vanilla"]
    return [["vanilla", *rest] if r % 2 == 0 else [*rest[::-1], "vanilla"] for r in range(rounds)]


@dataclass
class MethodFigures:
    """Per-epoch figures of one method: times per round, ratios to vanilla (min, median) and peak memory."""

    label: str
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    wall_ratio: list[float] = field(default_factory=list)
    cpu_ratio: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    mem_ratio: float = float("nan")

    def summary(self) -> dict[str, float]:
        """Min and median of the per-round ratios, median epoch times."""
        out = {"wall_s_median": statistics.median(self.wall_s), "cpu_s_median": statistics.median(self.cpu_s)}
        for key, vals in (("wall", self.wall_ratio), ("cpu", self.cpu_ratio)):
            out[f"{key}_ratio_min"] = min(vals)
            out[f"{key}_ratio_median"] = statistics.median(vals)
        return out


def ratios(times: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per method, per round: its time over the same round's vanilla time."""
    base = times["vanilla"]
    return {lab: [t / b for t, b in zip(ts, base)] for lab, ts in times.items()}


def measure(job: dict[str, Any], device: torch.device, log: Callable[[str], None] = print) -> dict[str, MethodFigures]:
    """Warm up every method, time ``rounds`` interleaved rounds, then one allocator-profiled epoch each."""
    labels = job["labels"]
    runners = {lab: make_runner(lab, job, device) for lab in labels}
    for lab, r in runners.items():
        for _ in range(job["warmup"]):
            r.run_epoch()
        log(f"{lab}: warmed up ({job['warmup']} epoch(s))")
    figs = {lab: MethodFigures(lab) for lab in labels}
    for i, order in enumerate(round_orders(labels, job["rounds"])):
        for lab in order:
            t = timed(runners[lab].run_epoch, device)
            figs[lab].wall_s.append(t.wall_s)
            figs[lab].cpu_s.append(t.cpu_s)
        log(f"round {i + 1}/{job['rounds']}: " + ", ".join(f"{lab} {figs[lab].wall_s[-1]:.3f} s" for lab in labels))
    for key in ("wall", "cpu"):
        for lab, rs in ratios({lab: getattr(f, f"{key}_s") for lab, f in figs.items()}).items():
            setattr(figs[lab], f"{key}_ratio", rs)
    for lab, r in runners.items():
        figs[lab].peak_bytes = peak_bytes(r.run_epoch, device)
    base = figs["vanilla"].peak_bytes
    for f in figs.values():
        f.mem_ratio = f.peak_bytes / base if base > 0 else float("nan")
    return figs


def markdown(figs: dict[str, MethodFigures], header: str) -> str:
    """One row per method: median epoch time, wall and CPU ratios (min, median), peak memory and its ratio."""
    lines = [
        header,
        "",
        "| method | epoch wall s (median) | wall ÷ vanilla min / median | CPU ÷ vanilla min / median | "
        "peak tensor MB | memory ÷ vanilla |",
        "|---|---|---|---|---|---|",
    ]
    for lab, f in figs.items():
        s = f.summary()
        lines.append(
            f"| {lab} | {s['wall_s_median']:.3f} | {s['wall_ratio_min']:.2f} / {s['wall_ratio_median']:.2f} | "
            f"{s['cpu_ratio_min']:.2f} / {s['cpu_ratio_median']:.2f} | {f.peak_bytes / 1e6:.2f} | {f.mem_ratio:.2f} |"
        )
    return "\n".join(lines)


def _options(items: list[str]) -> dict[str, dict[str, Any]]:
    """--opt LABEL:KEY=VALUE items as {label: {key: value}} (values read as JSON where they parse)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        lab, _, kv = item.partition(":")
        k, sep, v = kv.partition("=")
        if not sep or lab not in METHODS:
            raise ValueError(f"--opt expects LABEL:KEY=VALUE with a known label, got {item!r}")
        try:
            out.setdefault(lab, {})[k] = json.loads(v)
        except json.JSONDecodeError:
            out.setdefault(lab, {})[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="dat,dat_full", help=f"labels to pair with vanilla (of {', '.join(METHODS)})")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train-sigma", type=float, default=0.3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs per method before the rounds")
    ap.add_argument("--rounds", type=int, default=7, help="timed interleaved rounds (one epoch per method each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:N]")
    ap.add_argument("--opt", action="append", default=[], help="LABEL:KEY=VALUE method option (repeatable)")
    ap.add_argument("--json", default=None, help="write the per-round figures here")
    args = ap.parse_args(argv)
    labels = ["vanilla", *[m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "vanilla"]]
    unknown = [m for m in labels if m not in METHODS]
    if unknown:
        ap.error(f"unknown method label(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    if args.rounds < 1 or args.warmup < 0:
        ap.error("--rounds must be >= 1 and --warmup >= 0")
    try:
        device = pick_device(args.device)
        options = _options(args.opt)
    except ValueError as exc:
        ap.error(str(exc))
    torch.set_num_threads(args.threads)
    job = dict(
        labels=labels,
        data=args.data,
        data_dir=args.data_dir,
        model=args.model,
        model_kwargs=dict(DEFAULT_MODEL_ARGS) if args.model == "cnn" else {},
        batch_size=args.batch_size,
        lr=args.lr,
        train_sigma=args.train_sigma,
        warmup=args.warmup,
        rounds=args.rounds,
        seed=args.seed,
        options=options,
    )
    figs = measure(job, device, log=lambda s: print(s, file=sys.stderr, flush=True))
    header = (
        f"Training cost per epoch on {args.data} ({args.model}, batch {args.batch_size}, Gaussian sigma_d "
        f"{args.train_sigma:g}) on {device}, {args.threads} thread(s): {args.warmup} warm-up epoch(s), "
        f"{args.rounds} interleaved rounds, ratios per round; peak memory from the "
        f"{'CUDA allocator' if device.type == 'cuda' else 'CPU allocator (torch.profiler memory events)'}."
    )
    print(markdown(figs, header))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"header": header, "methods": {k: {**asdict(f), **f.summary()} for k, f in figs.items()}})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
