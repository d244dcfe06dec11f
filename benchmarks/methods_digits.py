"""Benchmark of the robust training methods: same budget and seeds, Monte Carlo evaluation, markdown table.

Every method (plus vanilla and noise injection) trains the same network with the same epochs, batch
size, learning rate and seeds under Gaussian device noise at --train-sigma; each trained model is then
evaluated with --draws noise draws at every sigma_d in --sigmas and under log-normal noise. Reported:
clean accuracy, mean noisy accuracy with its 95 % CI, 1 % KPP and EKL (NeFT's expected KL over correct
predictions), training time and peak memory relative to vanilla. With several seeds the CI is the
t-interval over the per-seed means (it includes training variability); with one seed it is the
Monte Carlo t-interval over draws. Each run executes in a fresh process so its peak memory is its own.

    python benchmarks/methods_digits.py --jobs 2               # digits, small CNN, 60 epochs: ~7 min on 2 cores
    python benchmarks/methods_digits.py --data mnist --data-dir ~/data --epochs 10 --out results.md
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
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
    "trice": ("trice", {}),
    "trice_recentred": ("trice", {"recentre": True}),
    "mtrd": ("mtrd", {}),
    "correctnet": ("correctnet", {}),
    "ibm_hwa": ("ibm_hwa", {"noise_scale": 1.0}),  # injected noise = the deployment noise
    "ibm_hwa_paper": ("ibm_hwa", {}),  # the paper's noise scale 3
}
DEFAULT_MODEL_ARGS = {"channels": [4, 8], "hidden": 32}


@dataclass
class RunResult:
    """One trained model: timings, memory and the Monte Carlo summaries per evaluation condition."""

    label: str
    seed: int
    train_s: float
    peak_mem_bytes: int
    clean: float
    evals: dict[str, dict[str, float]] = field(default_factory=dict)


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


def eval_specs(sigmas: list[float], lognormal: float) -> dict[str, dict[str, Any]]:
    """Evaluation conditions: Gaussian device noise at each sigma_d, plus log-normal noise."""
    specs = {f"sigma_d={s:g}": {"family": "gaussian", "sigma": s} for s in sigmas}
    specs[f"lognormal s={lognormal:g}"] = {"family": "lognormal", "sigma": lognormal}
    return specs


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, seed) and evaluate it; runs in its own process."""
    import torch

    torch.set_num_threads(job["threads"])
    from models.config import TrainConfig
    from models.data import load_dataset
    from models.montecarlo import evaluate_mc
    from models.noise.factory import noise_from_spec
    from models.training import train

    ds = load_dataset(job["data"], job["data_dir"])
    method = job["method"]
    cfg = TrainConfig(
        model=job["model"],
        model_kwargs=job["model_kwargs"],
        data=job["data"],
        data_root=job["data_dir"],
        method=method,
        method_options=job["options"],
        noise={"family": "gaussian", "sigma": job["train_sigma"]},
        epochs=job["epochs"],
        batch_size=job["batch_size"],
        lr=job["lr"],
        seed=job["seed"],
        device=job["device"],
        progress=False,
        val_noise_draws=0,
    )
    cuda = torch.cuda.is_available() and job["device"] != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with _PeakRSS() as mem:
        res = train(cfg, dataset=ds, log=lambda _s: None)
        if cuda:
            torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else mem.increase
    model = res.model
    out = RunResult(job["label"], job["seed"], train_s, int(peak), 0.0)
    for name, spec in job["evals"].items():
        r = evaluate_mc(
            model, ds.x_test, ds.y_test, noise_from_spec(spec), job["draws"], seed=1000 + job["seed"], batch_size=2000
        )
        out.clean = float(r.clean_accuracy)
        out.evals[name] = {"mean": r.mean, "ci_lo": r.ci95[0], "ci_hi": r.ci95[1], "kpp1": r.kpp[1.0], "ekl": r.ekl}
    return out.__dict__


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


def _t_half(values: list[float]) -> float:
    from scipy import stats

    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def aggregate(results: list[dict[str, Any]], labels: list[str], conds: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: seed-averaged clean accuracy, time, memory and per-condition mean/CI/KPP/EKL."""
    agg: dict[str, dict[str, Any]] = {}
    for lab in labels:
        rs = [r for r in results if r["label"] == lab]
        if not rs:
            continue
        a: dict[str, Any] = {
            "n": len(rs),
            "clean": sum(r["clean"] for r in rs) / len(rs),
            "train_s": sum(r["train_s"] for r in rs) / len(rs),
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


def markdown(agg: dict[str, dict[str, Any]], conds: list[str], header: str) -> str:
    """Two tables (accuracies in %): mean noisy accuracy [95 % CI] with cost, then 1 % KPP and EKL."""
    base = agg.get("vanilla")

    def rel(a: dict[str, Any], key: str) -> str:
        return f"{a[key] / base[key]:.2f}" if base and base[key] > 0 else "n/a"

    cols = ["method", "clean %"] + [f"{c} mean % [95% CI]" for c in conds] + ["train time x", "peak mem x"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for lab, a in agg.items():
        row = [lab, f"{100 * a['clean']:.1f}"]
        row += [
            f"{100 * a['cond'][c]['mean']:.1f} [{100 * a['cond'][c]['lo']:.1f}, {100 * a['cond'][c]['hi']:.1f}]"
            for c in conds
        ]
        row += [rel(a, "train_s"), rel(a, "mem")]
        lines.append("| " + " | ".join(row) + " |")
    if base and base["n"] > 1:
        cols = ["method"] + [f"{c} diff vs vanilla, pp [95% CI]" for c in conds]
        lines += [
            "",
            "Paired by seed (same initialisation and batch order as vanilla):",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "|".join(["---"] * len(cols)) + "|",
        ]
        for lab, a in agg.items():
            if lab == "vanilla" or a["n"] != base["n"]:
                continue
            row = [lab]
            for c in conds:
                diffs = [m - v for m, v in zip(a["cond"][c]["per_seed"], base["cond"][c]["per_seed"])]
                mean, half = sum(diffs) / len(diffs), _t_half(diffs)
                row.append(f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]")
            lines.append("| " + " | ".join(row) + " |")
    cols = ["method"] + [f"{c} KPP1 %" for c in conds] + [f"{c} EKL" for c in conds]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for lab, a in agg.items():
        row = (
            [lab] + [f"{100 * a['cond'][c]['kpp1']:.1f}" for c in conds] + [f"{a['cond'][c]['ekl']:.3f}" for c in conds]
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="digits", help="digits | mnist | fashion_mnist | cifar10 | cifar100")
    ap.add_argument("--data-dir", default=None, help="local dataset folder (needed for everything but digits)")
    ap.add_argument("--model", default="cnn", help="architecture name (cnn, mlp, vgg8, resnet18)")
    ap.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model keyword argument (JSON value); default for cnn: channels=[4,8] hidden=32",
    )
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated labels from: " + ", ".join(METHODS))
    ap.add_argument("--opt", action="append", default=[], metavar="LABEL:KEY=VALUE", help="extra method option")
    ap.add_argument("--epochs", type=int, default=60, help="same for every method; enough for all to converge")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-sigma", type=float, default=0.3, help="Gaussian sigma_d every noisy method trains at")
    ap.add_argument("--sigmas", default="0.1,0.2,0.3,0.4", help="evaluation sigma_d values")
    ap.add_argument("--lognormal", type=float, default=0.3, help="log-normal s of the extra evaluation condition")
    ap.add_argument("--draws", type=int, default=200, help="Monte Carlo noise draws per condition")
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
        try:
            extra.setdefault(lab, {})[k] = json.loads(v)
        except json.JSONDecodeError:
            extra.setdefault(lab, {})[k] = v
    model_kwargs: dict[str, Any] = dict(DEFAULT_MODEL_ARGS) if args.model == "cnn" and not args.model_arg else {}
    for item in args.model_arg:
        k, sep, v = item.partition("=")
        if not sep:
            ap.error(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            model_kwargs[k] = json.loads(v)
        except json.JSONDecodeError:
            model_kwargs[k] = v
    sigmas = [float(s) for s in args.sigmas.split(",")]
    evals = eval_specs(sigmas, args.lognormal)
    jobs = []
    for lab in labels:
        method, base_opts = METHODS[lab]
        opts = {**base_opts, **extra.get(lab, {})}
        jobs += [
            dict(
                label=lab,
                method=method,
                options=opts,
                seed=seed,
                data=args.data,
                data_dir=args.data_dir,
                model=args.model,
                model_kwargs=model_kwargs,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                train_sigma=args.train_sigma,
                evals=evals,
                draws=args.draws,
                threads=args.threads,
                device=args.device,
            )
            for seed in range(args.seeds)
        ]
    key = f"sigma_d={args.train_sigma:g}"

    def run_and_report(job: dict[str, Any]) -> dict[str, Any]:
        r = run_isolated(job)
        acc = r["evals"][key]["mean"] if key in r["evals"] else float("nan")
        print(
            f"{job['label']:15s} seed {job['seed']}: clean {100 * r['clean']:.1f}%  noisy@train-sigma {100 * acc:.1f}%  "
            f"train {r['train_s']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        return r

    t_all = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # threads only wait on child processes
        results = list(pool.map(run_and_report, jobs))
    agg = aggregate(results, labels, list(evals))
    header = (
        f"Robust training methods on {args.data} ({args.model} {json.dumps(model_kwargs)}): {args.epochs} epochs, batch {args.batch_size}, "
        f"Adam lr {args.lr:g}, {args.seeds} seed(s), trained at Gaussian sigma_d = {args.train_sigma:g}; "
        f"{args.draws} Monte Carlo draws per condition; total {time.perf_counter() - t_all:.0f} s."
    )
    table = markdown(agg, list(evals), header)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "header": header, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
