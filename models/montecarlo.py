"""Monte Carlo evaluation under weight noise: batched draws (vmap over stacked weights), KPP with its interval, EKL, ECE.

Draw i uses its own generator seeded from (seed, i), so the per-draw results are the same whatever
the chunking, the batching, or the number of processes the draws are split across.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from firmware_protocol.progress import Progress
from models.analog.context import active_tiles
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


KPP_LEVEL = 0.95  # confidence level of the KPP order-statistic intervals
ECE_BINS = 15  # equal-width bins of the max softmax probability (Guo et al. 2017's M = 15)
T_BOUNDS = (0.01, 100.0)  # search range of the matched temperature


def order_statistic_ranks(n: int, p: float, level: float = KPP_LEVEL) -> tuple[int, int, float]:
    """1-based ranks (l, u) of the sorted draws bracketing the p-quantile at ``level``, and the coverage they give.

    Distribution-free: with B ~ Binomial(n, p) the number of draws at or below the true p-quantile q_p,
    P(X_(l) <= q_p <= X_(u)) = P(l <= B <= u - 1), exactly for a continuous distribution and at least that
    with ties (accuracies are counts, so the interval is conservative). The tails are split equally: l is the
    largest rank with P(B < l) <= (1 - level) / 2, u the smallest with P(B >= u) <= (1 - level) / 2, so the
    coverage is >= ``level`` whenever both ranks exist. When n is too small for one of them (the 1st percentile
    needs n >= 368 for its lower rank at 95 %: 0.99^n must be <= 0.025; see ``draws_for_interval``), that end
    is the extreme draw (rank 1 or n) and the returned coverage, usually below ``level`` then, is what the
    interval really guarantees (the other tail's slack can still lift it to ``level``).
    """
    from scipy import stats

    if n < 1:
        raise ValueError(f"need at least one draw for a quantile interval, got {n}")
    if not 0.0 < p < 1.0 or not 0.0 < level < 1.0:
        raise ValueError(f"the quantile and level must lie strictly between 0 and 1, got p={p}, level={level}")
    tail = (1.0 - level) / 2.0
    j = np.arange(n + 1)
    # the j in 0..n with P(B < j) <= tail are 0..l (j = 0 always: P(B < 0) = 0), so l = their count - 1; 0: none
    lower = int(np.count_nonzero(stats.binom.cdf(j - 1, n, p) <= tail)) - 1
    # u = min{j : P(B >= j) <= tail} (sf(j - 1) = P(B >= j)); j = n + 1 (no draw) when even P(B >= n) > tail
    ok = stats.binom.sf(j, n, p) <= tail  # P(B >= j + 1) <= tail, for j = 0..n; j = n always holds
    upper = int(np.argmax(ok)) + 1
    lower, upper = max(lower, 1), min(upper, n)
    coverage = float(stats.binom.cdf(upper - 1, n, p) - stats.binom.cdf(lower - 1, n, p))
    return lower, upper, coverage


def draws_for_interval(p: float, level: float = KPP_LEVEL) -> int:
    """The fewest draws for which both ranks of the p-quantile's ``level`` interval exist (p^n, (1-p)^n <= tail)."""
    tail = (1.0 - level) / 2.0
    return max(1, math.ceil(math.log(tail) / math.log(max(p, 1.0 - p))))


def expected_calibration_error(bins: np.ndarray, n_samples: int) -> np.ndarray:
    """ECE of each draw from its (..., 3, ECE_BINS) sums [count, confidence, correct] over ``n_samples`` inputs."""
    bins = np.asarray(bins, dtype=np.float64)
    return np.abs(bins[..., 2, :] - bins[..., 1, :]).sum(-1) / n_samples


@dataclass
class MCResult:
    """Accuracy statistics over noise draws (accuracies in [0, 1])."""

    n_draws: int
    n_samples: int
    accuracies: np.ndarray = field(repr=False)  # per-draw accuracy, in draw order
    mean: float
    std: float
    ci95: tuple[float, float]  # t-interval of the mean accuracy (Monte Carlo error of the mean only)
    kpp: dict[float, float]  # k (percent) -> k-th percentile accuracy (an observed draw)
    worst: float
    best: float
    ekl: float  # mean KL(onehot || softmax) over correct predictions, all draws
    clean_accuracy: float | None = None
    # k -> 95 % order-statistic interval of the k-th percentile (two observed draws; see order_statistic_ranks)
    kpp_ci: dict[float, tuple[float, float]] = field(default_factory=dict)
    # k -> coverage the interval guarantees: >= 0.95, or less where n is too small and an end is the extreme draw
    kpp_ci_coverage: dict[float, float] = field(default_factory=dict)
    ece: float = float("nan")  # mean over draws of each draw's ECE (15 bins, softmax at temperature 1)
    ekl_matched: float = float("nan")  # EKL with every draw's logits divided by ``temperature``
    temperature: float = float("nan")  # NLL-optimal temperature of the clean network (or the one given)

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
        d["kpp_ci"] = {str(k): list(v) for k, v in self.kpp_ci.items()}
        d["kpp_ci_coverage"] = {str(k): v for k, v in self.kpp_ci_coverage.items()}
        d["ci95"] = list(self.ci95)
        return d


def summarize(
    accs: np.ndarray,
    kl_sum: float,
    n_correct: int,
    n_samples: int,
    kpp=(1.0, 5.0),
    clean_accuracy: float | None = None,
    *,
    ece_bins: np.ndarray | None = None,
    kl_matched_sum: float = float("nan"),
    temperature: float = float("nan"),
    level: float = KPP_LEVEL,
) -> MCResult:
    """Turn per-draw accuracies, pooled KL sums and per-draw ECE bin sums (n_draws, 3, ECE_BINS) into an MCResult."""
    from scipy import stats

    accs = np.asarray(accs, dtype=np.float64)
    n = len(accs)
    mean = float(accs.mean())
    std = float(accs.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
    kp = {float(k): float(np.quantile(accs, float(k) / 100.0, method="lower")) for k in kpp}
    ordered = np.sort(accs)
    ci: dict[float, tuple[float, float]] = {}
    cover: dict[float, float] = {}
    for k in (k for k in kp if 0.0 < k < 100.0):  # the 0th / 100th percentile (min / max) has no interval
        lo, hi, c = order_statistic_ranks(n, k / 100.0, level)
        ci[k], cover[k] = (float(ordered[lo - 1]), float(ordered[hi - 1])), c
    ece = float(expected_calibration_error(ece_bins, n_samples).mean()) if ece_bins is not None else float("nan")
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
        ci,
        cover,
        ece,
        kl_matched_sum / n_correct if n_correct else float("nan"),
        float(temperature),
    )


def fit_temperature(logits: Tensor, y: Tensor, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """Temperature T minimising the mean NLL of softmax(logits / T) on (logits, y) (temperature scaling).

    The NLL is convex in 1/T, so its derivative in 1/T is increasing and its root is found by Brent's method
    in float64. A network whose NLL still falls at the end of ``bounds`` (e.g. every input right with a margin:
    the optimum is T -> 0) gets that end.
    """
    from scipy import optimize

    z = logits.detach().double().cpu().reshape(-1, logits.shape[-1])
    zy = z.gather(1, y.detach().cpu().long().reshape(-1, 1)).squeeze(1)

    def slope(log_beta: float) -> float:  # d NLL / d beta = mean(E_p[z] - z_y), with p = softmax(beta z)
        p = torch.softmax(math.exp(log_beta) * z, dim=1)
        return float(((p * z).sum(1) - zy).mean())

    lo, hi = math.log(1.0 / bounds[1]), math.log(1.0 / bounds[0])
    if slope(lo) >= 0.0:
        return bounds[1]
    if slope(hi) <= 0.0:
        return bounds[0]
    return 1.0 / math.exp(optimize.brentq(slope, lo, hi, xtol=1e-12))


def activation_numel(model: nn.Module, x1: Tensor) -> int:
    """Sum of output sizes of all leaf modules for one sample (a memory estimate for chunking); an output that
    is a view of its input (Flatten, an in-place ReLU) holds no memory of its own and is not counted."""
    total = [0]

    def hook(_m, inputs, out):
        if isinstance(out, Tensor):
            ptr = out.untyped_storage().data_ptr()
            if not any(isinstance(i, Tensor) and i.untyped_storage().data_ptr() == ptr for i in inputs):
                total[0] += out.numel()

    hs = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hs:
            h.remove()
    return max(total[0], 1)


_CPU_CACHE_BYTES = 32 << 20  # the last-level cache the CPU working sets are sized to (a fixed figure: same numbers)


def _auto_chunk(
    model: nn.Module,
    x: Tensor,
    batch: int,
    device: torch.device,
    budget_bytes: int | None,
    weights: dict[str, Tensor],
    activations: int | None = None,
) -> int:
    """Draws per batched forward: activations (x2 for temporaries) plus stacked weights within the budget.

    On CPU the stacked weights of a chunk are also kept near the last-level cache size (32 MiB): larger
    chunks gain nothing there, and every fresh megabyte costs page faults. ``activations``: one sample's
    activation numbers (`activation_numel`), when already known.
    """
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = int(free * 0.3)
        else:
            budget_bytes = 1 << 30
    weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    if activations is None:
        activations = activation_numel(model, x[:1].to(device))
    per_draw = activations * batch * 4 * 2 + weight_bytes
    chunk = max(1, min(256, budget_bytes // per_draw))
    if device.type == "cpu":
        chunk = min(chunk, max(torch.get_num_threads(), _CPU_CACHE_BYTES // max(weight_bytes, 1)))
    return chunk


def forward_part(sample_bytes: int, weight_bytes: int, n_draws: int, batch: int, device: torch.device) -> int:
    """Inputs per forward pass of ``n_draws`` stacked draws: on CPU as many as keep the pass's activations
    (n_draws x samples x ``sample_bytes``) within the last-level cache, and at least as many as make a part's
    activations outweigh the weights it reads again (``weight_bytes`` per draw); a GPU takes the whole batch.

    A convolutional forward is bound by memory traffic once its activations leave the cache: 1,000 32x32 images
    through the small CNN ran 1.7x slower in one pass than in cache-sized parts. A weight-heavy network (an MLP)
    gets one part, since re-reading its weights per part would cost more than its activations save.
    """
    if device.type != "cpu":
        return batch
    sample_bytes = max(1, sample_bytes)
    fits = _CPU_CACHE_BYTES // max(1, n_draws * sample_bytes)
    worth = -(-weight_bytes // sample_bytes)
    return max(1, min(batch, max(fits, worth)))


def _in_parts(forward: Callable[[Tensor], Tensor], x: Tensor, part: int, dim: int) -> Tensor:
    """``forward`` of x in parts of ``part`` inputs, the outputs joined along ``dim`` (the sample axis)."""
    if part >= len(x):
        return forward(x)
    return torch.cat([forward(x[b : b + part]) for b in range(0, len(x), part)], dim)


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
    temperature: float | None = None,
) -> MCResult:
    """Accuracy of ``model`` on (x, y) over ``n_draws`` draws of ``noise``, many draws per forward pass.

    Draws are stacked and run together: ``engine`` "fold" folds the draws into the channel axis
    (grouped convs, models.batched), "vmap" uses ``vmap(functional_call)`` (any model), "auto" uses
    fold when it reproduces vmap on the first batch. Under torch.distributed the draws are split
    round-robin over the processes and gathered (every process gets the result). On CPU each batch runs in
    passes of `forward_part` inputs, sized to the cache (a convolutional network's forward is memory-bound
    beyond it); the passes move only the float rounding of the logits, never which draws are taken.

    ``read_noise``: noise of one read of the programmed chip, redrawn for every batch of ``batch_size`` inputs
    on top of the draw's chip (``noise``, then drawn without read noise): an array read per inference batch,
    as a chip reads its devices at every inference, rather than one read frozen per chip. Batch b of draw i uses
    the generator (seed, i, 1, b), so the results do not depend on the chunking either.

    Confidence beside EKL (NeFT's EKL: mean -log p_y over correct predictions, which a network lowers by merely
    scaling its logits up): ``ece``, the expected calibration error of the raw softmax (15 equal-width bins of
    the max probability, per draw, then averaged over the draws), and ``ekl_matched``, EKL with every draw's
    logits divided by one temperature: ``temperature`` if given (compare models at one T), else the clean
    network's NLL-optimal T on (x, y) (``fit_temperature``; NaN without the clean pass, ``clean=False``).
    Matching each network to its own calibrated T removes the logit scale from EKL, so what is left is the
    confidence the noise costs. Both are accumulated per draw inside the loop (sums of counts and confidences).
    """
    if engine not in ("auto", "fold", "vmap"):
        raise ValueError(f"engine must be 'auto', 'fold' or 'vmap', not {engine!r}")
    if n_draws < 1:
        raise ValueError(f"need at least one noise draw, got {n_draws}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"the temperature must be > 0, got {temperature}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        rank, world = _dist_info(distributed)
        clean_acc: float | None = None
        temp = float("nan") if temperature is None else float(temperature)
        weights = {k: v.detach() for k, v in clean_weights(model).items()}
        weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
        batch = min(batch_size, len(x))
        # analog tiles draw their noise per forward pass, so their passes keep the whole batch
        split = device.type == "cpu" and active_tiles(model) is None
        activations = activation_numel(model, x[:1].to(device)) if split else None
        sample_bytes = (activations or 0) * next(iter(weights.values())).element_size() if weights else 0

        def part_of(n_draws: int) -> int:
            return forward_part(sample_bytes, weight_bytes, n_draws, batch, device) if split else batch

        if clean or noise is None:
            clean_logits = _clean_logits(model, x, batch_size, device, part_of(1))
            yd = y.to(device)
            clean_acc = float((clean_logits.argmax(-1) == yd).double().mean())
            if temperature is None:
                temp = fit_temperature(clean_logits, yd)
        if noise is None:
            c, k, kt, bins = _draw_stats(clean_logits[None], yd, temp)
            return summarize(
                np.full(n_draws, clean_acc),
                float(k[0]) * n_draws,
                int(c[0]) * n_draws,
                len(y),
                kpp,
                clean_acc if clean else None,
                ece_bins=np.repeat(bins.cpu().numpy(), n_draws, axis=0),
                kl_matched_sum=float(kt[0]) * n_draws,
                temperature=temp,
            )
        mine = list(range(rank, n_draws, world))
        chunk = draws_per_chunk or _auto_chunk(model, x, batch, device, memory_budget_bytes, weights, activations)
        part = part_of(chunk)  # of the nominal chunk, so every chunk of a run splits its batches alike
        correct = torch.zeros(n_draws, dtype=torch.float64, device=device)
        kl_sum = torch.zeros(n_draws, dtype=torch.float64, device=device)
        kl_matched = torch.zeros(n_draws, dtype=torch.float64, device=device)
        ece_bins = torch.zeros(n_draws, 3, ECE_BINS, dtype=torch.float64, device=device)
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
                logits = _in_parts(partial(batched, model, used), xb, part, 1).float()  # (n_chunk, B, C)
                c, k, kt, bins = _draw_stats(logits, yb, temp)
                correct.index_add_(0, ids, c)
                kl_sum.index_add_(0, ids, k)
                kl_matched.index_add_(0, ids, kt)
                ece_bins.index_add_(0, ids, bins)
            bar.advance(len(idx))
        bar.close()
        if world > 1:  # every draw lives on one process, zeros elsewhere: the sums are exact
            for t in (correct, kl_sum, kl_matched, ece_bins):
                dist.all_reduce(t)
        accs = (correct / len(y)).cpu().numpy()
        return summarize(
            accs,
            float(kl_sum.sum()),
            int(round(float(correct.sum()))),
            len(y),
            kpp,
            clean_acc,
            ece_bins=ece_bins.cpu().numpy(),
            kl_matched_sum=float(kl_matched.sum()),
            temperature=temp,
        )
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


def _draw_stats(logits: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per draw of (n, B, C) logits: correct count, KL sum, KL sum at ``temperature`` and ECE bin sums (n, 3, 15).

    The bins hold [count, sum of max softmax probability, correct count] of the inputs whose max probability
    falls in ((m - 1) / 15, m / 15]. The confidences are float32 numbers in [2^-e, 1], e = ceil(log2 C) + 1 (a
    max probability is >= 1/C up to rounding), so each is a multiple of 2^-(e + 23) and any sum of N < 2^(30 - e)
    of them is a multiple below 2^53 of that unit: exact in float64 (N < 2^25 inputs for C = 10, 2^19 for
    C = 1000), so the bins do not depend on the order of the additions (chunking, engine, processes) whenever
    the logits are the same.
    """
    ok_n, kl = _correct_and_kl(logits, y)
    pred = logits.argmax(-1)
    ok = pred == y
    n = logits.shape[0]
    if math.isnan(temperature):
        kl_t = torch.full_like(kl, float("nan"))
    else:
        nll_t = -F.log_softmax(logits / temperature, dim=-1).gather(-1, y.expand(n, -1).unsqueeze(-1)).squeeze(-1)
        kl_t = torch.where(ok, nll_t, torch.zeros_like(nll_t)).sum(-1).double()
    conf = torch.softmax(logits, dim=-1).gather(-1, pred.unsqueeze(-1)).squeeze(-1)  # p of the predicted class
    m = torch.clamp(torch.ceil(conf * ECE_BINS).long() - 1, 0, ECE_BINS - 1)
    bins = torch.zeros(n, 3, ECE_BINS, dtype=torch.float64, device=logits.device)
    bins[:, 0].scatter_add_(1, m, torch.ones_like(conf, dtype=torch.float64))
    bins[:, 1].scatter_add_(1, m, conf.double())
    bins[:, 2].scatter_add_(1, m, ok.double())
    return ok_n, kl, kl_t, bins


def _clean_logits(model: nn.Module, x: Tensor, batch_size: int, device: torch.device, part: int) -> Tensor:
    """The clean network's float32 logits for every input, in batches of ``batch_size``, each run in forward
    passes of ``part`` inputs."""
    return torch.cat(
        [_in_parts(model, x[b : b + batch_size].to(device), part, 0).float() for b in range(0, len(x), batch_size)]
    )


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
    temperature: float | None = None,
) -> MCResult:
    """Plain one-draw-per-iteration Monte Carlo (slow; the check for ``evaluate_mc``, read noise per batch too)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        weights = {k: v.detach() for k, v in clean_weights(model).items()}
        clean_logits = model(x.to(device)).float()
        yd = y.to(device)
        temp = fit_temperature(clean_logits, yd) if temperature is None else float(temperature)
        accs, kl, kl_t, nc = [], 0.0, 0.0, 0
        bins = np.zeros((n_draws, 3, ECE_BINS))
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
                c, k, kt, bb = _draw_stats(logits[None], y[b : b + step].to(device), temp)
                correct += int(c[0])
                kl += float(k[0])
                kl_t += float(kt[0])
                bins[i] += bb[0].cpu().numpy()
            accs.append(correct / len(y))
            nc += correct
        clean_acc = float((clean_logits.argmax(-1) == yd).double().mean())
        return summarize(
            np.array(accs), kl, nc, len(y), kpp, clean_acc, ece_bins=bins, kl_matched_sum=kl_t, temperature=temp
        )
    finally:
        model.train(was_training)
