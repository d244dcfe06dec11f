"""Monte Carlo evaluation under weight noise: batched draws (vmap over stacked weights), KPP, EKL.

Draw i uses its own generator seeded from (seed, i), so the per-draw results are the same whatever
the chunking, the batching, or the number of processes the draws are split across.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from firmware_protocol.progress import Progress
from models.batched import check_folded, folded_forward, vmap_forward
from models.noise.apply import clean_weights
from models.noise.base import WeightNoise


def draw_generator(seed: int, index: int, device: torch.device | str, *stream: int) -> torch.Generator:
    """The generator of draw ``index`` (independent streams per draw via numpy's SeedSequence); ``stream``: a
    sub-stream of the draw (e.g. its fresh read of input batch b), independent of the draw's own."""
    key = [int(seed) & 0xFFFFFFFF, int(index), *(int(k) for k in stream)]
    s = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0])
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(s & 0x7FFF_FFFF_FFFF_FFFF)
    return g


@dataclass
class MCResult:
    """Accuracy statistics over noise draws (accuracies in [0, 1])."""

    n_draws: int
    n_samples: int
    accuracies: np.ndarray = field(repr=False)  # per-draw accuracy, in draw order
    mean: float
    std: float
    ci95: tuple[float, float]  # t-interval of the mean accuracy
    kpp: dict[float, float]  # k (percent) -> k-th percentile accuracy (an observed draw)
    worst: float
    best: float
    ekl: float  # mean KL(onehot || softmax) over correct predictions, all draws
    clean_accuracy: float | None = None

    def central_interval(self, level: float = 0.9) -> tuple[float, float]:
        """The central ``level`` interval of the per-draw accuracies (e.g. 5th and 95th percentiles, interpolated)."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"the interval's level must lie strictly between 0 and 1, got {level}")
        lo, hi = np.quantile(self.accuracies, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
        return float(lo), float(hi)

    def to_dict(self) -> dict:
        """JSON-able form (per-draw accuracies included as a list)."""
        d = asdict(self)
        d["accuracies"] = [float(a) for a in self.accuracies]
        d["kpp"] = {str(k): v for k, v in self.kpp.items()}
        d["ci95"] = list(self.ci95)
        return d


def summarize(
    accs: np.ndarray, kl_sum: float, n_correct: int, n_samples: int, kpp=(1.0, 5.0), clean_accuracy: float | None = None
) -> MCResult:
    """Turn per-draw accuracies and pooled KL sums into an MCResult."""
    from scipy import stats

    accs = np.asarray(accs, dtype=np.float64)
    n = len(accs)
    mean = float(accs.mean())
    std = float(accs.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
    kp = {float(k): float(np.quantile(accs, float(k) / 100.0, method="lower")) for k in kpp}
    return MCResult(
        n,
        n_samples,
        accs,
        mean,
        std,
        (mean - half, mean + half),
        kp,
        float(accs.min()),
        float(accs.max()),
        kl_sum / n_correct if n_correct else float("nan"),
        clean_accuracy,
    )


def _activation_numel(model: nn.Module, x1: Tensor) -> int:
    """Sum of output sizes of all leaf modules for one sample (a memory estimate for chunking)."""
    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, Tensor):
            total[0] += out.numel()

    hs = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hs:
            h.remove()
    return max(total[0], 1)


def _auto_chunk(
    model: nn.Module, x: Tensor, batch: int, device: torch.device, budget_bytes: int | None, weights: dict[str, Tensor]
) -> int:
    """Draws per batched forward: activations (x2 for temporaries) plus stacked weights within the budget.

    On CPU the stacked weights of a chunk are also kept near the last-level cache size (32 MiB): larger
    chunks gain nothing there, and every fresh megabyte costs page faults.
    """
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = int(free * 0.3)
        else:
            budget_bytes = 1 << 30
    weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    per_draw = _activation_numel(model, x[:1].to(device)) * batch * 4 * 2 + weight_bytes
    chunk = max(1, min(256, budget_bytes // per_draw))
    if device.type == "cpu":
        chunk = min(chunk, max(torch.get_num_threads(), (32 << 20) // max(weight_bytes, 1)))
    return chunk


def _dist_info(distributed: bool | None) -> tuple[int, int]:
    on = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = on
    if distributed and not on:
        raise ValueError("distributed Monte Carlo needs an initialised torch.distributed process group")
    return (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)


@torch.no_grad()
def evaluate_mc(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise: WeightNoise | None,
    n_draws: int = 1000,
    *,
    seed: int = 0,
    kpp: tuple[float, ...] = (1.0, 5.0),
    batch_size: int = 1000,
    draws_per_chunk: int | None = None,
    device: torch.device | str | None = None,
    distributed: bool | None = None,
    memory_budget_bytes: int | None = None,
    clean: bool = True,
    progress: bool = False,
    engine: str = "auto",
    read_noise: WeightNoise | None = None,
) -> MCResult:
    """Accuracy of ``model`` on (x, y) over ``n_draws`` draws of ``noise``, many draws per forward pass.

    Draws are stacked and run together: ``engine`` "fold" folds the draws into the channel axis
    (grouped convs, models.batched), "vmap" uses ``vmap(functional_call)`` (any model), "auto" uses
    fold when it reproduces vmap on the first batch. Under torch.distributed the draws are split
    round-robin over the processes and gathered (every process gets the result).

    ``read_noise``: noise of one read of the programmed chip, redrawn for every batch of ``batch_size`` inputs
    on top of the draw's chip (``noise``, then drawn without read noise): an array read per inference batch,
    as a chip reads its devices at every inference, rather than one read frozen per chip. Batch b of draw i uses
    the generator (seed, i, 1, b), so the results do not depend on the chunking either.
    """
    if engine not in ("auto", "fold", "vmap"):
        raise ValueError(f"engine must be 'auto', 'fold' or 'vmap', not {engine!r}")
    if n_draws < 1:
        raise ValueError(f"need at least one noise draw, got {n_draws}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        rank, world = _dist_info(distributed)
        clean_acc = _clean_accuracy(model, x, y, batch_size, device) if clean else None
        if noise is None:
            accs = np.full(
                n_draws, clean_acc if clean_acc is not None else _clean_accuracy(model, x, y, batch_size, device)
            )
            kl, nc = _clean_kl(model, x, y, batch_size, device)
            return summarize(accs, kl * n_draws, nc * n_draws, len(y), kpp, clean_acc)
        mine = list(range(rank, n_draws, world))
        weights = {k: v.detach() for k, v in clean_weights(model).items()}
        chunk = draws_per_chunk or _auto_chunk(model, x, min(batch_size, len(x)), device, memory_budget_bytes, weights)
        correct = torch.zeros(n_draws, dtype=torch.float64, device=device)
        kl_sum = torch.zeros(n_draws, dtype=torch.float64, device=device)
        sample_draws = noise.draw_sampler(weights)
        sample_reads = read_noise.draw_sampler(weights) if read_noise is not None else None

        batched = None if engine == "auto" else (folded_forward if engine == "fold" else vmap_forward)
        # a bar with ETA on a terminal, one line when done elsewhere (draws of this process)
        bar = Progress(len(mine), "Monte Carlo", "draws", enabled=progress and rank == 0)
        for start in range(0, len(mine), chunk):
            idx = mine[start : start + chunk]
            gens = [draw_generator(seed, i, device) for i in idx]
            stacked = sample_draws(gens)
            ids = torch.as_tensor(idx, device=device)
            for b in range(0, len(x), batch_size):
                xb = x[b : b + batch_size].to(device, non_blocking=True)
                yb = y[b : b + batch_size].to(device, non_blocking=True)
                used = stacked
                if sample_reads is not None:
                    used = with_fresh_read(stacked, weights, sample_reads, seed, idx, b // batch_size, device)
                if batched is None:
                    batched = folded_forward if check_folded(model, used, xb[:8]) else vmap_forward
                logits = batched(model, used, xb).float()  # (n_chunk, B, C)
                c, k = _correct_and_kl(logits, yb)
                correct.index_add_(0, ids, c)
                kl_sum.index_add_(0, ids, k)
            bar.advance(len(idx))
        bar.close()
        if world > 1:
            dist.all_reduce(correct)
            dist.all_reduce(kl_sum)
        accs = (correct / len(y)).cpu().numpy()
        return summarize(accs, float(kl_sum.sum()), int(round(float(correct.sum()))), len(y), kpp, clean_acc)
    finally:
        model.train(was_training)


def with_fresh_read(
    stacked: dict[str, Tensor],
    weights: dict[str, Tensor],
    sample_reads,
    seed: int,
    draws: list[int],
    batch: int,
    device: torch.device | str,
) -> dict[str, Tensor]:
    """The draws' chip weights plus a fresh read's noise for input batch ``batch`` (generators (seed, i, 1, batch))."""
    reads = sample_reads([draw_generator(seed, i, device, 1, batch) for i in draws])
    return {k: (v + (reads[k] - weights[k])) if k in reads else v for k, v in stacked.items()}


def _correct_and_kl(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-draw count of correct predictions and sum of -log p_y over them (= KL(onehot || p))."""
    pred = logits.argmax(-1)
    ok = pred == y
    nll = -F.log_softmax(logits, dim=-1).gather(-1, y.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    return ok.sum(-1).double(), torch.where(ok, nll, torch.zeros_like(nll)).sum(-1).double()


def _clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> float:
    correct = 0
    for b in range(0, len(x), batch_size):
        correct += int((model(x[b : b + batch_size].to(device)).argmax(-1) == y[b : b + batch_size].to(device)).sum())
    return correct / len(y)


def _clean_kl(model, x, y, batch_size, device) -> tuple[float, int]:
    kl, nc = 0.0, 0
    for b in range(0, len(x), batch_size):
        c, k = _correct_and_kl(model(x[b : b + batch_size].to(device)).float()[None], y[b : b + batch_size].to(device))
        kl += float(k.sum())
        nc += int(c.sum())
    return kl, nc


@torch.no_grad()
def evaluate_mc_reference(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    noise: WeightNoise,
    n_draws: int,
    *,
    seed: int = 0,
    kpp: tuple[float, ...] = (1.0, 5.0),
    read_noise: WeightNoise | None = None,
    batch_size: int | None = None,
) -> MCResult:
    """Plain one-draw-per-iteration Monte Carlo (slow; the check for ``evaluate_mc``, read noise per batch too)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        weights = {k: v.detach() for k, v in clean_weights(model).items()}
        accs, kl, nc = [], 0.0, 0
        step = batch_size or len(x)
        for i in range(n_draws):
            noisy = noise.sample(weights, draw_generator(seed, i, device))
            correct = 0
            for b in range(0, len(x), step):
                used = noisy
                if read_noise is not None:
                    read = read_noise.sample(weights, draw_generator(seed, i, device, 1, b // step))
                    used = {k: v + (read[k] - weights[k]) if k in read else v for k, v in noisy.items()}
                logits = functional_call(model, used, (x[b : b + step].to(device),)).float()
                c, k = _correct_and_kl(logits[None], y[b : b + step].to(device))
                correct += int(c[0])
                kl += float(k[0])
            accs.append(correct / len(y))
            nc += correct
        return summarize(np.array(accs), kl, nc, len(y), kpp, _clean_accuracy(model, x, y, len(x), device))
    finally:
        model.train(was_training)
