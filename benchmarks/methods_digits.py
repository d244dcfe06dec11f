"""Benchmark of the robust training methods: same budget and seeds, choices on a validation split, test read once.

Every method (plus vanilla and noise injection) trains the same network with the same epochs, batch
size, learning rate and seeds under Gaussian device noise at --train-sigma. The protocol keeps the test
split out of every choice:

* each run holds out --val-fraction of the training split (class-stratified, seeded by the run's seed, so
  every method of one seed sees the same split), and trains on the rest;
* a method option with a grid (--tune, and by default DAT's alpha and CorrectNet's lam, whose defaults
  were once picked on the digits test split) takes the grid value with the best mean over seeds of the
  validation accuracy under noise at --train-sigma (--val-draws draws; ties to the earlier value); the
  epochs, batch size and learning rate are the shared budget, not tuned;
* only then is the test split read, once, for the chosen model of every method and seed: Monte Carlo
  evaluation with --draws noise draws at every sigma_d in --sigmas and under log-normal noise.

Reported: clean accuracy, mean noisy accuracy with its 95 % CI, 1 % KPP and EKL (NeFT's expected KL over
correct predictions), epoch time and peak memory relative to vanilla. Both are taken after a warm-up
(`_warm_up_torch`: torch imports its compiler on the first optimizer step, about 1.2 s of CPU and 100 MB that
every method pays once and that used to fill these columns): the epoch time is the median over the epochs
after the first, the memory the peak resident-set increase of the run's own fresh process over its
warmed-up start. They are unpaired (runs of --jobs > 1 share the cores); benchmarks/train_overhead.py gives
the paired, interleaved per-epoch ratios with the allocator's peak memory. With several seeds the CI is the
t-interval (scipy.stats.t) over the per-seed means (it includes training variability), and each method
is paired by seed with vanilla and with noise injection (same initialisation, batch order, validation
split and Monte Carlo draws): the mean per-seed difference with its t-based 95 % CI over seeds. With one
seed the CI is the Monte Carlo t-interval over draws. Each run executes in a fresh process so its peak
memory is its own.

    python benchmarks/methods_digits.py --jobs 2                # digits, small CNN, 60 epochs, 5 seeds
    python benchmarks/methods_digits.py --data mnist1d          # MNIST-1D (generated offline), MLP
    python benchmarks/methods_digits.py --data mnist --data-dir ~/data --epochs 10 --out results.md
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# table label -> (registered method, options); every method runs with its defaults except where noted
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "vanilla": ("vanilla", {}),
    "noise": ("noise", {}),
    "neft_ovf": ("neft_ovf", {}),
    "neft_irs": ("neft_irs", {}),
    "dat": ("dat", {}),  # DAT-Fast, k = 10 per layer
    "dat_global": ("dat", {"scope": "global"}),  # DAT-Fast, k = 10 over the whole network
    "dat_full": ("dat", {"rank": "full"}),  # DAT-Full
    "dat_last": ("dat", {"layers": "last"}),  # DAT-Fast in the paper's setting: the ascent on the last layer only
    "trice": ("trice", {}),
    "trice_recentred": ("trice", {"recentre": True}),
    "mtrd": ("mtrd", {}),
    "correctnet": ("correctnet", {}),
    "ibm_hwa": ("ibm_hwa", {"noise_scale": 1.0}),  # injected noise = the deployment noise
    "ibm_hwa_paper": ("ibm_hwa", {"noise_scale": 3.0}),  # Table 3: 3x the (PCM, t = 20 s) noise
}
DEFAULT_MODEL_ARGS = {"channels": [4, 8], "hidden": 32}
# option grids chosen on the validation split unless --no-default-tune: the options whose defaults were
# once picked on the digits test split (DAT's alpha from 1, 10, 30, 100: 100 diverged; CorrectNet's lam)
DEFAULT_TUNE: dict[str, dict[str, list[Any]]] = {
    "dat": {"alpha": [1.0, 10.0, 30.0]},
    "dat_global": {"alpha": [1.0, 10.0, 30.0]},
    "dat_full": {"alpha": [1.0, 10.0, 30.0]},
    "correctnet": {"lam": [1e-4, 1e-3, 1e-2]},
}


@dataclass
class RunResult:
    """One trained model: timings, memory and the Monte Carlo summaries per evaluation condition."""

    label: str
    seed: int
    train_s: float
    peak_mem_bytes: int
    clean: float
    evals: dict[str, dict[str, float]] = field(default_factory=dict)
    epoch_s: float = float("nan")  # median epoch time after the first epoch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Samples this process's resident set size in a thread; peak increase over the start value."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.period, self.start, self.peak, self._stop = period_s, _rss_bytes(), 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period)

    def __enter__(self) -> _PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def increase(self) -> int:
        return max(self.peak - self.start, 0)


def _warm_up_torch() -> None:
    """One Adam step and one conv forward/backward on scratch tensors: torch's lazy imports (its compiler, on the
    first optimizer step) happen here, before the timer and the memory baseline, as they would in any longer run."""
    import torch

    w = torch.zeros(1, 1, 3, 3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-3)
    torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), w).sum().backward()
    opt.step()


def epoch_seconds(history: list[dict[str, Any]]) -> float:
    """Median epoch time after the first epoch (the first pays one-off costs); the only epoch's time for one."""
    times = [float(h["time_s"]) for h in history if "time_s" in h]
    if not times:
        return float("nan")
    rest = sorted(times[1:] or times)
    mid = len(rest) // 2
    return rest[mid] if len(rest) % 2 else 0.5 * (rest[mid - 1] + rest[mid])


def eval_specs(sigmas: list[float], lognormal: float) -> dict[str, dict[str, Any]]:
    """Evaluation conditions: Gaussian device noise at each sigma_d, plus log-normal noise."""
    specs = {f"sigma_d={s:g}": {"family": "gaussian", "sigma": s} for s in sigmas}
    specs[f"lognormal s={lognormal:g}"] = {"family": "lognormal", "sigma": lognormal}
    return specs


def _train_config(job: dict[str, Any]) -> Any:
    """The TrainConfig of one (method, options, seed) job."""
    from models.config import TrainConfig

    return TrainConfig(
        model=job["model"],
        model_kwargs=job["model_kwargs"],
        data=job["data"],
        data_root=job["data_dir"],
        method=job["method"],
        method_options=job["options"],
        noise={"family": "gaussian", "sigma": job["train_sigma"]},
        epochs=job["epochs"],
        batch_size=job["batch_size"],
        lr=job["lr"],
        seed=job["seed"],
        device=job["device"],
        progress=False,
        val_noise_draws=0,
        val_fraction=job["val_fraction"],
    )


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, options, seed) without reading the test split; score it on the validation split.

    The trained network is written to ``job["model_path"]`` for the test evaluation after the choice.
    Runs in its own process (its peak memory is its own).
    """
    import torch

    torch.set_num_threads(job["threads"])
    from models.checkpoint import model_record, save_checkpoint
    from models.data import load_dataset
    from models.montecarlo import evaluate_mc
    from models.noise.factory import noise_from_spec
    from models.training import train

    cfg = _train_config(job)
    ds = load_dataset(job["data"], job["data_dir"]).with_validation(cfg.val_fraction, cfg.seed)
    assert ds.x_val is not None and ds.y_val is not None  # val_fraction > 0 is checked by main
    cuda = torch.cuda.is_available() and job["device"] != "cpu"
    _warm_up_torch()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with _PeakRSS() as mem:
        res = train(cfg, dataset=ds, log=lambda _s: None, evaluate_test=False)
        if cuda:
            torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else mem.increase
    model = res.model
    noise = noise_from_spec({"family": "gaussian", "sigma": job["train_sigma"]})
    r = evaluate_mc(model, ds.x_val, ds.y_val, noise, job["val_draws"], seed=2000 + job["seed"], batch_size=2000)
    save_checkpoint(model_record(cfg, ds, model.cpu()), job["model_path"])
    return {
        "label": job["label"],
        "seed": job["seed"],
        "options": job["options"],
        "train_s": train_s,
        "epoch_s": epoch_seconds(res.history),
        "peak_mem_bytes": int(peak),
        "val_clean": float(r.clean_accuracy) if r.clean_accuracy is not None else float("nan"),
        "val_noisy": r.mean,
        "model_path": job["model_path"],
    }


def evaluate_chosen(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The one read of the test split: Monte Carlo evaluation of the chosen run of every method and seed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(job["threads"])
    try:
        return _evaluate_runs(job)
    finally:
        torch.set_num_threads(threads)


def _evaluate_runs(job: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    from models.checkpoint import load_model
    from models.data import load_dataset
    from models.montecarlo import evaluate_mc
    from models.noise.factory import noise_from_spec

    ds = load_dataset(job["data"], job["data_dir"])
    device = job["device"] if job["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out = []
    for run in job["runs"]:
        model, _ = load_model(run["model_path"], device)
        res = RunResult(run["label"], run["seed"], run["train_s"], run["peak_mem_bytes"], 0.0)
        res.epoch_s = float(run.get("epoch_s", float("nan")))
        for name, spec in job["evals"].items():
            r = evaluate_mc(
                model,
                ds.x_test,
                ds.y_test,
                noise_from_spec(spec),
                job["draws"],
                seed=1000 + run["seed"],
                batch_size=2000,
            )
            res.clean = float(r.clean_accuracy) if r.clean_accuracy is not None else float("nan")
            res.evals[name] = {"mean": r.mean, "ci_lo": r.ci95[0], "ci_hi": r.ci95[1], "kpp1": r.kpp[1.0], "ekl": r.ekl}
        out.append({**res.__dict__, "options": run["options"], "val_noisy": run["val_noisy"]})
    return out


def _worker(job: dict[str, Any], conn) -> None:
    try:
        conn.send(("ok", run_one(job)))
    except BaseException as exc:  # report any failure of the child to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_isolated(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``run_one`` in a fresh (spawned) process and return its result."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_worker, args=(job, child))
    p.start()
    child.close()
    status, payload = parent.recv()
    p.join()
    if status != "ok":
        raise RuntimeError(f"{job['label']} seed {job['seed']}: {payload}")
    return payload


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a {option: [values]} grid, in the order given ([{}] for no grid)."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def choose(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method label, the options with the best mean validation noisy accuracy over seeds (ties: earlier)."""
    chosen: dict[str, dict[str, Any]] = {}
    for lab in dict.fromkeys(r["label"] for r in runs):
        scores: dict[str, list[float]] = {}
        opts: dict[str, dict[str, Any]] = {}
        for r in runs:
            if r["label"] == lab:
                key = json.dumps(r["options"], sort_keys=True)
                scores.setdefault(key, []).append(r["val_noisy"])
                opts[key] = r["options"]
        best = max(scores, key=lambda k: sum(scores[k]) / len(scores[k]))  # max keeps the first of equals
        chosen[lab] = opts[best]
    return chosen


def _t_half(values: list[float]) -> float:
    from scipy import stats

    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def aggregate(results: list[dict[str, Any]], labels: list[str], conds: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: seed-averaged clean accuracy, time, memory and per-condition mean/CI/KPP/EKL (per seed kept)."""
    agg: dict[str, dict[str, Any]] = {}
    for lab in labels:
        rs = sorted((r for r in results if r["label"] == lab), key=lambda r: r["seed"])
        if not rs:
            continue
        a: dict[str, Any] = {
            "n": len(rs),
            "seeds": [r["seed"] for r in rs],
            "options": rs[0].get("options", {}),
            "clean": sum(r["clean"] for r in rs) / len(rs),
            "train_s": sum(r["train_s"] for r in rs) / len(rs),
            "epoch_s": sum(float(r.get("epoch_s", float("nan"))) for r in rs) / len(rs),
            "mem": sum(r["peak_mem_bytes"] for r in rs) / len(rs),
            "cond": {},
        }
        for c in conds:
            means = [r["evals"][c]["mean"] for r in rs]
            m = sum(means) / len(means)
            if len(rs) > 1:
                h = _t_half(means)
                lo, hi = m - h, m + h
            else:
                lo, hi = rs[0]["evals"][c]["ci_lo"], rs[0]["evals"][c]["ci_hi"]
            a["cond"][c] = {
                "mean": m,
                "lo": lo,
                "hi": hi,
                "per_seed": means,
                "kpp1": sum(r["evals"][c]["kpp1"] for r in rs) / len(rs),
                "ekl": sum(r["evals"][c]["ekl"] for r in rs) / len(rs),
            }
        agg[lab] = a
    return agg


def paired(a: dict[str, Any], base: dict[str, Any], cond: str) -> tuple[float, float, int]:
    """Mean per-seed difference a - base on ``cond`` over their common seeds, its t-based 95 % half-width, n."""
    ref = dict(zip(base["seeds"], base["cond"][cond]["per_seed"]))
    diffs = [m - ref[s] for s, m in zip(a["seeds"], a["cond"][cond]["per_seed"]) if s in ref]
    if not diffs:
        return float("nan"), float("nan"), 0
    return sum(diffs) / len(diffs), _t_half(diffs), len(diffs)


def _paired_table(agg: dict[str, dict[str, Any]], conds: list[str], base_label: str) -> list[str]:
    """Markdown rows of every other method's paired difference from ``base_label`` (empty without >= 2 seeds or rows)."""
    base = agg.get(base_label)
    if not base or base["n"] < 2:
        return []
    cols = ["method"] + [f"{c} diff vs {base_label}, pp [95% CI]" for c in conds]
    lines = [
        "",
        f"Paired by seed with {base_label} (same initialisation, batch order, validation split and noise draws; "
        f"t-interval over seeds):",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(["---"] * len(cols)) + "|",
    ]
    for lab, a in agg.items():
        if lab in (base_label, "vanilla"):  # vanilla vs noise is the vanilla table's noise row, negated
            continue
        row = [lab]
        for c in conds:
            mean, half, n = paired(a, base, c)
            if n < 2:
                row.append("n/a")
                continue
            row.append(f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]")
        lines.append("| " + " | ".join(row) + " |")
    return lines if len(lines) > 5 else []  # no other method to pair: no table


def markdown(agg: dict[str, dict[str, Any]], conds: list[str], header: str) -> str:
    """Tables (accuracies in %, test split): mean noisy accuracy [95 % CI] with cost, paired differences, KPP and EKL."""
    base = agg.get("vanilla")

    def rel(a: dict[str, Any], key: str) -> str:
        if base is None or not base.get(key, 0) > 0 or not math.isfinite(a.get(key, float("nan"))):
            return "n/a"
        return f"{a[key] / base[key]:.2f}"

    cols = ["method", "options", "clean %"] + [f"{c} mean % [95% CI]" for c in conds]
    cols += ["epoch time x", "peak RSS x"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for lab, a in agg.items():
        opts = ", ".join(f"{k}={v}" for k, v in a["options"].items()) or "-"
        row = [lab, opts, f"{100 * a['clean']:.1f}"]
        row += [
            f"{100 * a['cond'][c]['mean']:.1f} [{100 * a['cond'][c]['lo']:.1f}, {100 * a['cond'][c]['hi']:.1f}]"
            for c in conds
        ]
        row += [rel(a, "epoch_s"), rel(a, "mem")]
        lines.append("| " + " | ".join(row) + " |")
    lines += _paired_table(agg, conds, "vanilla")
    lines += _paired_table(agg, conds, "noise")
    cols = ["method"] + [f"{c} KPP1 %" for c in conds] + [f"{c} EKL" for c in conds]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for lab, a in agg.items():
        row = (
            [lab] + [f"{100 * a['cond'][c]['kpp1']:.1f}" for c in conds] + [f"{a['cond'][c]['ekl']:.3f}" for c in conds]
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _json_value(v: str) -> Any:
    """A command-line value as JSON when it parses, else the string itself."""
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _grid_values(v: str) -> list[Any]:
    """'1,10,30' or '[1, 10, 30]' -> [1, 10, 30] (each a JSON value when it parses)."""
    whole = _json_value(v)
    if isinstance(whole, list):
        return whole
    return [_json_value(x.strip()) for x in v.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="digits", help="digits | mnist1d | mnist | fashion_mnist | cifar10 | cifar100")
    ap.add_argument(
        "--data-dir", default=None, help="local dataset folder (needed for the image sets; mnist1d caches there)"
    )
    ap.add_argument(
        "--model", default=None, help="architecture name (cnn, mlp, vgg8, resnet18); default cnn, mlp for mnist1d"
    )
    ap.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model keyword argument (JSON value); default for cnn: channels=[4,8] hidden=32",
    )
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated labels from: " + ", ".join(METHODS))
    ap.add_argument("--opt", action="append", default=[], metavar="LABEL:KEY=VALUE", help="extra method option")
    ap.add_argument(
        "--tune",
        action="append",
        default=[],
        metavar="LABEL:KEY=V1,V2,...",
        help="grid of a method option, chosen on the validation split (replaces a default grid of that option)",
    )
    ap.add_argument(
        "--no-default-tune", action="store_true", help="no default grids (DAT alpha, CorrectNet lam): their defaults"
    )
    ap.add_argument("--epochs", type=int, default=60, help="same for every method; enough for all to converge")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every method (>= 2 for paired CIs)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="share of the training split held out per seed")
    ap.add_argument("--val-draws", type=int, default=50, help="noise draws of the validation score of a grid value")
    ap.add_argument("--train-sigma", type=float, default=0.3, help="Gaussian sigma_d every noisy method trains at")
    ap.add_argument("--sigmas", default="0.1,0.2,0.3,0.4", help="evaluation sigma_d values")
    ap.add_argument("--lognormal", type=float, default=0.3, help="log-normal s of the extra evaluation condition")
    ap.add_argument("--draws", type=int, default=200, help="Monte Carlo noise draws per condition (test split)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (each in its own process)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="write the markdown table here (also printed)")
    ap.add_argument("--json", default=None, help="write raw per-run results here")
    ap.add_argument("--from-json", default=None, help="only re-render the tables of a --json file")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        runs = saved["runs"]
        labels = list(dict.fromkeys(r["label"] for r in runs))
        conds = list(runs[0]["evals"])
        print(markdown(aggregate(runs, labels, conds), conds, saved.get("header", "")))
        return 0

    if not 0.0 < args.val_fraction < 1.0:
        ap.error(f"--val-fraction must be in (0, 1): the choices need a validation split, got {args.val_fraction:g}")
    if args.seeds < 1 or args.val_draws < 1 or args.draws < 1:
        ap.error("--seeds, --val-draws and --draws must be >= 1")
    model = args.model or ("mlp" if args.data.lower().replace("-", "_") == "mnist1d" else "cnn")
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in labels if m not in METHODS]
    if unknown:
        ap.error(f"unknown method label(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    if "vanilla" not in labels:
        labels.insert(0, "vanilla")
    extra: dict[str, dict[str, Any]] = {}
    for item in args.opt:
        lab, _, kv = item.partition(":")
        k, sep, v = kv.partition("=")
        if not sep or lab not in METHODS:
            ap.error(f"--opt expects LABEL:KEY=VALUE with a known label, got {item!r}")
        extra.setdefault(lab, {})[k] = _json_value(v)
    grids: dict[str, dict[str, list[Any]]] = (
        {} if args.no_default_tune else {lab: dict(g) for lab, g in DEFAULT_TUNE.items() if lab in labels}
    )
    for item in args.tune:
        lab, _, kv = item.partition(":")
        k, sep, v = kv.partition("=")
        values = _grid_values(v) if sep else []
        if not sep or not k or lab not in METHODS or not values:
            ap.error(f"--tune expects LABEL:KEY=V1,V2,... with a known label, got {item!r}")
        if lab not in labels:
            ap.error(f"--tune {item!r}: method {lab} is not in --methods")
        grids.setdefault(lab, {})[k] = values
    for lab, grid in grids.items():
        for k in grid:
            extra.get(lab, {}).pop(k, None)  # a tuned option is the grid's, not a fixed --opt value
    model_kwargs: dict[str, Any] = dict(DEFAULT_MODEL_ARGS) if model == "cnn" and not args.model_arg else {}
    for item in args.model_arg:
        k, sep, v = item.partition("=")
        if not sep:
            ap.error(f"--model-arg expects KEY=VALUE, got {item!r}")
        model_kwargs[k] = _json_value(v)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    evals = eval_specs(sigmas, args.lognormal)

    from models.data import load_dataset  # fails early on a missing folder; generates and caches mnist1d once

    try:
        load_dataset(args.data, args.data_dir)
    except (ValueError, OSError) as exc:
        ap.error(str(exc))
    tmp = tempfile.TemporaryDirectory(prefix="methods-bench-")
    common = dict(
        data=args.data,
        data_dir=args.data_dir,
        model=model,
        model_kwargs=model_kwargs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        train_sigma=args.train_sigma,
        val_fraction=args.val_fraction,
        val_draws=args.val_draws,
        threads=args.threads,
        device=args.device,
    )
    jobs = []
    for lab in labels:
        method, base_opts = METHODS[lab]
        for g, point in enumerate(grid_points(grids.get(lab, {}))):
            opts = {**base_opts, **extra.get(lab, {}), **point}
            jobs += [
                dict(
                    common,
                    label=lab,
                    method=method,
                    options=opts,
                    seed=seed,
                    model_path=str(Path(tmp.name) / f"{lab}-g{g}-s{seed}.pt"),
                )
                for seed in range(args.seeds)
            ]

    def train_and_report(job: dict[str, Any]) -> dict[str, Any]:
        r = run_isolated(job)
        opts = ", ".join(f"{k}={v}" for k, v in job["options"].items())
        print(
            f"{job['label']:15s} seed {job['seed']} {opts}: validation clean {100 * r['val_clean']:.1f}%  "
            f"noisy@train-sigma {100 * r['val_noisy']:.1f}%  train {r['train_s']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        return r

    t_all = time.perf_counter()
    with tmp:  # the trained networks live here until their test evaluation
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # threads only wait on child processes
            trained = list(pool.map(train_and_report, jobs))
        chosen = choose(trained)
        test_job = dict(
            data=args.data,
            data_dir=args.data_dir,
            device=args.device,
            threads=max(1, args.threads * args.jobs),
            evals=evals,
            draws=args.draws,
            runs=[r for lab in labels for r in trained if r["label"] == lab and r["options"] == chosen[lab]],
        )
        results = evaluate_chosen(test_job)  # in this process: the networks are small, a child costs an import
    agg = aggregate(results, labels, list(evals))
    tuned = "; ".join(
        f"{lab} {k} from {grids[lab][k]} -> {chosen[lab][k]}" for lab in labels if lab in grids for k in grids[lab]
    )
    header = (
        f"Robust training methods on {args.data} ({model} {json.dumps(model_kwargs)}): {args.epochs} epochs, "
        f"batch {args.batch_size}, Adam lr {args.lr:g}, {args.seeds} seed(s), trained at Gaussian sigma_d = "
        f"{args.train_sigma:g} on {100 * (1 - args.val_fraction):g} % of the training split; options chosen on the "
        f"other {100 * args.val_fraction:g} % (validation, {args.val_draws} draws at the training sigma_d)"
        f"{': ' + tuned if tuned else ''}; the test split read once, {args.draws} Monte Carlo draws per condition; "
        f"total {time.perf_counter() - t_all:.0f} s. Epoch time: median after the first epoch; peak RSS: over the "
        f"run's warmed-up start (unpaired; benchmarks/train_overhead.py pairs them)."
    )
    table = markdown(agg, list(evals), header)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        for r in trained:
            r.pop("model_path", None)
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "header": header, "chosen": chosen, "tuning": trained, "runs": results}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
