"""Running one protocol: train every (method, option point, seed) once, choose on validation, read the test split once.

Phases, each cached as JSON under ``--out`` so a rerun (or a resumed, interrupted run) skips what is done:

1. **train**: every label x grid point x training noise x seed, on the training split minus a seeded,
   class-stratified validation split (``Dataset.with_validation``: the same for every method of a seed);
   the dataset handed to training has its test split removed, and ``train(evaluate_test=False)``;
2. **validate**: labels with a grid get a Monte Carlo score on the validation split (``val_draws`` draws)
   under the selection noise (the training noise, or the section's ``select_condition``), by the label's
   ``select_metric``; the grid point with the best mean over seeds is kept (``methods_digits.choose``);
3. **test**: the chosen run of every label and seed, once per condition, ``draws`` Monte Carlo draws on the
   test split; draw i of seed s uses generator (1000 + s, i) for every method, so methods are paired;
4. **judge**: claims from the per-seed paired differences (verdict.py).

Runs and evaluations are keyed by a hash of everything that changes their numbers (the TrainConfig without
its data folder, the profile declarations a noise refers to, the device type, the evaluation settings), not
by protocol, so two protocols with the same setting share runs. Vanilla never reads the noise, so it is
trained without one and shared across training noises. Analog conditions run the tile (models.analog) with
the model's learned input ranges (IBM HWA) or, for other models, ranges calibrated on the first
``calibration_samples`` training images (never the test split).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.methods_digits import choose, grid_points
from benchmarks.reproduce.config import HIGHER_IS_BETTER, Claim, Condition, Protocol, Section, parse_metric
from benchmarks.reproduce.profiles import declaration_hash, materialise, referenced, resolve_spec
from benchmarks.reproduce.verdict import PairedResult, judge, paired_diffs

KEY_VERSION = 1  # bump when a change here alters the numbers of cached runs or evaluations
TEST_SEED, VAL_SEED = 1000, 2000  # Monte Carlo seeds of a run of seed s: TEST_SEED + s, VAL_SEED + s
CLEAN = "-"  # the training-noise name of runs trained without noise (vanilla)


@dataclass
class RunOptions:
    """How to run a protocol: section, data folder, device, seeds, parallel jobs, output folder."""

    out: Path
    section: str = "standin"
    data_dir: str | None = None
    device: str = "cpu"
    seeds: int | None = None  # None: the section's
    jobs: int = 1
    threads: int = 1  # torch threads per job
    log: Callable[[str], None] = field(default=lambda _s: None)


@dataclass
class ProtocolResult:
    """What one protocol run produced: chosen options, per-label per-condition per-seed stats, judged claims."""

    protocol: Protocol
    section: Section
    seeds: list[int]
    chosen: dict[str, dict[str, dict[str, Any]]]  # label -> training noise -> options
    stats: dict[str, dict[str, dict[int, dict[str, Any]]]]  # label -> condition -> seed -> eval stats
    claims: list[tuple[Claim, PairedResult, dict[str, Any]]]
    trained: int  # runs trained in this call (0 on a full resume)
    evaluated: int  # evaluations computed in this call
    wall_s: float


def stable_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a temporary file renamed into place), so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A cached record, or None when missing or unreadable (it is then recomputed)."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ data


@functools.lru_cache(maxsize=2)
def _dataset(data: str, root: str | None) -> Any:
    """The dataset (loaded once per process)."""
    from models.data import load_dataset

    return load_dataset(data, root)


def training_dataset(ds: Any, seed: int, val_fraction: float) -> Any:
    """The seed's training and validation splits, with the test split removed: what training may see."""
    split = ds.with_validation(val_fraction, seed)
    return dataclasses.replace(split, x_test=split.x_test[:0], y_test=split.y_test[:0])


def read_split(ds: Any, seed: int, val_fraction: float, split: str) -> tuple[Any, Any]:
    """Inputs and labels of one split ("train", "val" of the seed's split, or "test")."""
    if split == "test":
        return ds.x_test, ds.y_test
    tr = ds.with_validation(val_fraction, seed)
    if split == "val":
        return tr.x_val, tr.y_val
    if split == "train":
        return tr.x_train, tr.y_train
    raise ValueError(f"unknown split {split!r} (train, val, test)")


# ------------------------------------------------------------------------------------------------ jobs


def _device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else device


def _profile_decls(proto: Protocol, *specs: dict[str, Any] | None) -> dict[str, Any]:
    """The declarations (by name) of the profiles some noise specs refer to: part of a cache key."""
    return {n: proto.profiles[n] for s in specs for n in referenced(s)}


def train_config(sec: Section, proto: Protocol, label: str, options: dict[str, Any], noise: Any, seed: int) -> dict:
    """The TrainConfig dict of one run (noise as declared, profile paths unresolved)."""
    spec = proto.methods[label]
    budget = {**sec.train, **spec.train, **sec.label_train.get(label, {})}
    return {
        "model": sec.model,
        "model_kwargs": dict(sec.model_kwargs),
        "data": sec.data,
        "method": spec.method,
        "method_options": dict(options),
        "noise": noise,
        "seed": seed,
        "val_fraction": sec.val_fraction,
        "val_noise_draws": 0,
        "progress": False,
        **budget,
    }


def plan_training(proto: Protocol, sec: Section, seeds: list[int], opts: RunOptions) -> list[dict[str, Any]]:
    """Every training job of the section: label x grid point x training noise x seed (vanilla once per point/seed)."""
    jobs = []
    for label, spec in proto.methods.items():
        names = [CLEAN] if spec.trains_clean else list(sec.train_noise)
        base = proto.options(sec.kind, label)
        for point in grid_points(proto.grid(sec.kind, label)):
            options = {**base, **point}
            for tname in names:
                noise = None if tname == CLEAN else sec.train_noise[tname]
                for seed in seeds:
                    cfg = train_config(sec, proto, label, options, noise, seed)
                    key = stable_hash(
                        {
                            "v": KEY_VERSION,
                            "config": cfg,
                            "profiles": _profile_decls(proto, noise),
                            "device": _device_kind(opts.device),
                        }
                    )
                    jobs.append(
                        {"key": key, "label": label, "train": tname, "options": options, "seed": seed, "config": cfg}
                    )
    return jobs


def execute_train(job: dict[str, Any]) -> dict[str, Any]:
    """Train one run without the test split, save its model, write and return its record (in a worker or here)."""
    import torch

    from models.checkpoint import model_record, save_checkpoint
    from models.config import TrainConfig

    torch.set_num_threads(job["threads"])
    cfg_dict = {**job["config"], "noise": job["noise_resolved"], "data_root": job["data_dir"], "device": job["device"]}
    cfg = TrainConfig.from_dict(cfg_dict)
    ds = training_dataset(_dataset(cfg.data, job["data_dir"]), cfg.seed, cfg.val_fraction)
    t0 = time.perf_counter()
    res = train(cfg, dataset=ds, log=lambda _s: None, evaluate_test=False)
    train_s = time.perf_counter() - t0
    model_path = Path(job["model_path"])
    model_path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model_record(cfg, ds, res.model.cpu()), model_path)
    method_state = res.checkpoint.get("train_state", {}).get("method", {}) or {}
    ranges = method_state.get("input_ranges")
    last = res.history[-1] if res.history else {}
    record = {
        "key": job["key"],
        "label": job["label"],
        "train": job["train"],
        "options": job["options"],
        "seed": job["seed"],
        "config": job["config"],
        "model_file": model_path.name,
        "input_ranges": {k: float(v) for k, v in ranges.items()} if ranges else None,
        "train_s": train_s,
        "val_clean_last_epoch": last.get("val_acc"),
    }
    _write_json(Path(job["record_path"]), record)
    return record


def train(*args: Any, **kwargs: Any) -> Any:
    """models.training.train (a module-level name, so a test can watch what training is handed)."""
    from models.training import train as _train

    return _train(*args, **kwargs)


def mc_stats(
    model: Any,
    x: Any,
    y: Any,
    noise: Any,
    analog: dict[str, Any] | None,
    draws: int,
    seed: int,
    kpp: tuple[float, ...],
    batch_size: int,
    calibration: Any,
    input_ranges: dict[str, float] | None,
) -> dict[str, Any]:
    """Monte Carlo statistics of a model on (x, y) under ``noise`` (a WeightNoise or None), on the tile if ``analog``."""
    from models.montecarlo import evaluate_mc

    if analog:
        from models.analog import analog_config, analog_tiles

        changes = {k: v for k, v in analog.items() if k != "preset"}
        cfg = analog_config(str(analog.get("preset", "ibm_table1")), **changes)
        ranges = input_ranges if cfg.input_range and input_ranges else None
        calib = None if ranges is not None or not cfg.input_range else calibration
        with analog_tiles(model, cfg, input_ranges=ranges, calibration=calib, seed=seed) as tiles:
            r = evaluate_mc(model, x, y, tiles.draws(noise), draws, seed=seed, kpp=kpp, batch_size=batch_size)
    else:
        r = evaluate_mc(model, x, y, noise, draws, seed=seed, kpp=kpp, batch_size=batch_size)
    return {
        "n_draws": r.n_draws,
        "n_samples": r.n_samples,
        "clean": r.clean_accuracy,
        "mean": r.mean,
        "std": r.std,
        "ci95": list(r.ci95),
        "worst": r.worst,
        "kpp": {str(k): v for k, v in r.kpp.items()},
        "kpp_ci": {str(k): list(v) for k, v in r.kpp_ci.items()},
        "kpp_ci_coverage": {str(k): v for k, v in r.kpp_ci_coverage.items()},
        "ekl": r.ekl,
        "ekl_matched": r.ekl_matched,
        "ece": r.ece,
    }


def execute_eval(job: dict[str, Any]) -> dict[str, Any]:
    """One Monte Carlo evaluation of a trained run on the validation or test split; writes and returns its record."""
    import torch

    from models.checkpoint import load_model
    from models.noise.factory import noise_from_spec

    torch.set_num_threads(job["threads"])
    run = job["run"]
    cfg = run["config"]
    ds = _dataset(cfg["data"], job["data_dir"])
    x, y = read_split(ds, run["seed"], cfg["val_fraction"], job["split"])
    calib, _ = read_split(ds, run["seed"], cfg["val_fraction"], "train")
    model, _ = load_model(job["model_path"], job["device"])
    t0 = time.perf_counter()
    stats = mc_stats(
        model,
        x,
        y,
        noise_from_spec(job["noise_resolved"]),
        job["analog"],
        job["draws"],
        job["mc_seed"],
        tuple(job["kpp"]),
        job["batch_size"],
        calib[: job["calibration_samples"]],
        run.get("input_ranges"),
    )
    record = {"key": job["key"], "run": run["key"], "split": job["split"], "eval_s": time.perf_counter() - t0, **stats}
    _write_json(Path(job["record_path"]), record)
    return record


def _execute(
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    jobs: list[dict[str, Any]],
    opts: RunOptions,
    describe: Callable[[dict[str, Any], dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """Run jobs here (``jobs`` 1) or in that many spawned processes; results in job order; progress to ``log``."""
    out: list[dict[str, Any] | None] = [None] * len(jobs)
    if opts.jobs <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            out[i] = fn(job)
            opts.log(f"  [{i + 1}/{len(jobs)}] {describe(job, out[i] or {})}")
        return [r for r in out if r is not None]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=opts.jobs, mp_context=ctx) as pool:
        futures: dict[Future[dict[str, Any]], int] = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        done = 0
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                out[i] = fut.result()
            except Exception as exc:
                raise RuntimeError(f"{describe(jobs[i], {})}: {type(exc).__name__}: {exc}") from None
            done += 1
            opts.log(f"  [{done}/{len(jobs)}] {describe(jobs[i], out[i] or {})}")
    return [r for r in out if r is not None]


def _opts_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"


# ------------------------------------------------------------------------------------------------ protocol


def metric_value(stats: dict[str, Any], metric: str) -> float:
    """The value of a metric ("mean", "kpp:1", "ekl", ...) in one evaluation's statistics."""
    name, k = parse_metric(metric)
    if name == "kpp":
        key = str(float(k if k is not None else 1.0))
        if key not in stats["kpp"]:
            raise ValueError(f"metric {metric}: the evaluation holds KPP at {', '.join(stats['kpp'])} only")
        return float(stats["kpp"][key])
    v = stats[name]
    return float("nan") if v is None else float(v)


def _higher_is_better(metric: str) -> bool:
    name, _ = parse_metric(metric)
    return True if name == "kpp" else HIGHER_IS_BETTER[name]


def _kpp_levels(proto: Protocol, sec: Section) -> tuple[float, ...]:
    """The section's KPP levels plus every level a claim or selection metric needs."""
    levels = set(sec.kpp)
    metrics = [c.metric for c in proto.claims] + [sec.select_metric]
    metrics += [m.select_metric for m in proto.methods.values() if m.select_metric]
    for m in metrics:
        name, k = parse_metric(m)
        if name == "kpp" and k is not None:
            levels.add(k)
    return tuple(sorted(levels))


def _select(sec: Section, tname: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(noise spec, analog) of the validation choice for runs trained under ``tname``."""
    c = sec.conditions.get(sec.select_condition)
    if c is not None and c.train == tname:
        return c.noise, c.analog
    return sec.train_noise[tname], None


def run_protocol(proto: Protocol, opts: RunOptions) -> ProtocolResult:
    """Train, choose, evaluate and judge one protocol's section (see the module docstring)."""
    t_start = time.perf_counter()
    sec = proto.section(opts.section)
    seeds = list(range(opts.seeds if opts.seeds is not None else sec.seeds))
    out = Path(opts.out)
    paths = materialise(proto.profiles, out / "profiles") if proto.profiles else {}
    kpp = _kpp_levels(proto, sec)
    common = {"data_dir": opts.data_dir, "device": opts.device, "threads": opts.threads}

    # 1. train
    jobs = plan_training(proto, sec, seeds, opts)
    runs: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        rec_path = out / "runs" / f"{job['key']}.json"
        rec = _read_json(rec_path)
        if rec is not None and (out / "runs" / rec.get("model_file", "")).is_file() and rec.get("key") == job["key"]:
            runs[job["key"]] = {**rec, "label": job["label"], "train": job["train"]}
            continue
        todo.append(
            {
                **job,
                **common,
                "noise_resolved": resolve_spec(job["config"]["noise"], paths),
                "record_path": str(rec_path),
                "model_path": str(out / "runs" / f"{job['key']}.pt"),
            }
        )
    todo = list({j["key"]: j for j in todo}.values())  # two labels with one setting train once
    opts.log(f"{proto.name} [{sec.kind}]: {len(jobs)} runs planned, {len(todo)} to train")
    for rec in _execute(
        execute_train,
        todo,
        opts,
        lambda j, r: (
            f"trained {j['label']} ({_opts_text(j['options'])}) noise {j['train']} seed {j['seed']}"
            + (f": {r['train_s']:.1f} s" if r else "")
        ),
    ):
        runs[rec["key"]] = rec
    by_job = [(job, runs[job["key"]]) for job in jobs]

    # 2. validate the grid points and choose
    evaluated = 0
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    val_jobs, val_meta = [], []
    for label in proto.methods:
        points = grid_points(proto.grid(sec.kind, label))
        for tname in sec.train_noise:
            chosen.setdefault(label, {})
            if len(points) <= 1:
                chosen[label][tname] = {**proto.options(sec.kind, label), **points[0]}
                continue
            noise, analog = _select(sec, tname)
            for job, run in by_job:
                if job["label"] != label or job["train"] not in (tname, CLEAN):
                    continue
                ej = _eval_job(proto, run, "val", noise, analog, sec.val_draws, VAL_SEED, kpp, sec, out, paths, common)
                val_jobs.append(ej)
                val_meta.append((label, tname, job))
    val_records, n_new = _cached_evals(val_jobs, opts, out)
    evaluated += n_new
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (label, tname, job), rec in zip(val_meta, val_records):
        metric = proto.methods[label].select_metric or sec.select_metric
        v = metric_value(rec, metric)
        score = v if _higher_is_better(metric) else -v
        groups.setdefault((label, tname), []).append(
            {"label": label, "options": job["options"], "val_noisy": score if math.isfinite(score) else -math.inf}
        )
    for (label, tname), recs in groups.items():
        chosen[label][tname] = choose(recs)[label]

    # 3. the one read of the test split
    test_jobs, test_meta = [], []
    for cname, cond in sec.conditions.items():
        for label in proto.methods:
            for job, run in by_job:
                if job["label"] != label or job["train"] not in (cond.train, CLEAN):
                    continue
                if job["options"] != chosen[label][cond.train]:
                    continue
                ej = _eval_job(
                    proto, run, "test", cond.noise, cond.analog, sec.draws, TEST_SEED, kpp, sec, out, paths, common
                )
                test_jobs.append(ej)
                test_meta.append((label, cname, job["seed"]))
    test_records, n_new = _cached_evals(test_jobs, opts, out)
    evaluated += n_new
    stats: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for (label, cname, seed), rec in zip(test_meta, test_records):
        stats.setdefault(label, {}).setdefault(cname, {})[seed] = rec

    # 4. judge
    claims = [(c, *judge_claim(c, stats)) for c in proto.claims]
    return ProtocolResult(proto, sec, seeds, chosen, stats, claims, len(todo), evaluated, time.perf_counter() - t_start)


def _eval_job(
    proto: Protocol,
    run: dict[str, Any],
    split: str,
    noise: dict[str, Any] | None,
    analog: dict[str, Any] | None,
    draws: int,
    seed_base: int,
    kpp: tuple[float, ...],
    sec: Section,
    out: Path,
    paths: dict[str, Path],
    common: dict[str, Any],
) -> dict[str, Any]:
    """An evaluation job of one run (key: the run, the split, the noise as declared, analog, draws, seed, KPP levels)."""
    mc_seed = seed_base + int(run["seed"])
    key = stable_hash(
        {
            "v": KEY_VERSION,
            "run": run["key"],
            "split": split,
            "noise": noise,
            "profiles": _profile_decls(proto, noise),
            "analog": analog,
            "draws": draws,
            "seed": mc_seed,
            "kpp": list(kpp),
            "calibration_samples": sec.calibration_samples if analog else None,
        }
    )
    return {
        **common,
        "key": key,
        "run": run,
        "split": split,
        "noise_resolved": resolve_spec(noise, paths),
        "analog": analog,
        "draws": draws,
        "mc_seed": mc_seed,
        "kpp": list(kpp),
        "batch_size": sec.eval_batch_size,
        "calibration_samples": sec.calibration_samples,
        "model_path": str(out / "runs" / run["model_file"]),
        "record_path": str(out / "evals" / f"{key}.json"),
    }


def _cached_evals(jobs: list[dict[str, Any]], opts: RunOptions, out: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of the evaluation jobs (cached ones read, the others computed); and how many were computed."""
    found: dict[str, dict[str, Any]] = {}
    todo: list[dict[str, Any]] = []
    for j in jobs:
        rec = _read_json(Path(j["record_path"]))
        if rec is not None and rec.get("key") == j["key"]:
            found[j["key"]] = rec
        elif j["key"] not in {t["key"] for t in todo}:
            todo.append(j)
    if todo:
        opts.log(f"  {len(todo)} {todo[0]['split']} evaluation(s) to run")
    for rec in _execute(
        execute_eval,
        todo,
        opts,
        lambda j, r: (
            f"{j['split']} {j['run']['label']} seed {j['run']['seed']}"
            + (f": mean {100 * r['mean']:.1f} %, {r['eval_s']:.1f} s" if r else "")
        ),
    ):
        found[rec["key"]] = rec
    return [found[j["key"]] for j in jobs], len(todo)


def seed_values(
    stats: dict[str, dict[int, dict[str, Any]]], conditions: tuple[str, ...], metric: str
) -> dict[int, float]:
    """Per seed, the metric averaged over ``conditions`` (seeds evaluated under all of them)."""
    seeds = set.intersection(*(set(stats.get(c, {})) for c in conditions)) if conditions else set()
    return {s: sum(metric_value(stats[c][s], metric) for c in conditions) / len(conditions) for s in sorted(seeds)}


def judge_claim(claim: Claim, stats: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> tuple[PairedResult, dict]:
    """The paired verdict of a claim, and context: each side's seed mean and, for KPP, its order-statistic interval."""
    a = seed_values(stats.get(claim.a, {}), claim.condition, claim.metric)
    b = seed_values(stats.get(claim.b, {}), claim.condition, claim.metric)
    res = judge(paired_diffs(a, b, claim.direction), claim.margin)
    context: dict[str, Any] = {
        "a_mean": sum(a.values()) / len(a) if a else float("nan"),
        "b_mean": sum(b.values()) / len(b) if b else float("nan"),
    }
    name, k = parse_metric(claim.metric)
    if name == "kpp":
        key = str(float(k if k is not None else 1.0))
        for side, lab in (("a", claim.a), ("b", claim.b)):
            ivs = [rec["kpp_ci"].get(key) for c in claim.condition for rec in stats.get(lab, {}).get(c, {}).values()]
            ivs = [iv for iv in ivs if iv]
            if ivs:  # mean over seeds (and conditions) of the per-run 95 % order-statistic intervals
                context[f"{side}_kpp_ci"] = [sum(i[0] for i in ivs) / len(ivs), sum(i[1] for i in ivs) / len(ivs)]
    return res, context


def profile_files(proto: Protocol, out: Path) -> dict[str, str]:
    """Where the protocol's declared profiles are written under ``out`` (name -> path)."""
    return {n: str(out / "profiles" / f"{n}-{declaration_hash(d)}.h5") for n, d in proto.profiles.items()}


def condition_text(cond: Condition) -> str:
    """A short description of a condition's evaluation noise (for tables)."""
    spec = cond.noise or {"family": "none"}
    parts = [f"{k}={v}" for k, v in spec.items() if k not in ("family",)]
    text = f"{spec['family']}({', '.join(parts)})"
    if cond.analog:
        text += f" on tile {cond.analog.get('preset', 'ibm_table1')}"
    return text
