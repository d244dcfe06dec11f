"""Benchmark: the issue-16 scoreboard, `rram demo`'s deployment chain on several chip seeds, against the targets.

For each chip seed the whole demo runs (hil.pipeline.demo.run_demo: characterize a throwaway simulated chip,
fit its profile, train, deploy with SWIM onto a fresh copy of the same chip, read back, predict). Per seed:
the deployed model's noise-free accuracy, the Monte Carlo prediction (mean and central 90 % interval of its
draws), the measured read-back accuracy, the write cycles and their ratio to full write-verify, twice: the
profile-based ratio `rram demo` prints, and the ratio of the pulses the run file counts (records plus the
`unrecorded_pulses` ledger) to full write-verify at the cost per device this deployment's own verified devices
paid (or, with --full-wv, to the pulses counted by a real full write-verify deployment of the same seed).
Summary rows test issue 16's targets. Nothing is tuned here: it scores whatever the library does today.

    nice python benchmarks/deploy_seeds.py                  # seeds 1..5, the demo's configuration: 2-6 min a seed
    nice python benchmarks/deploy_seeds.py --full-wv        # and a full write-verify deployment per seed
    nice python benchmarks/deploy_seeds.py --quick --seeds 1,2
    nice python benchmarks/deploy_seeds.py --ablate         # and each seed without mapping / re-verify: the gains
    nice python benchmarks/deploy_seeds.py --json out.json  # the table, and every number as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.deploy.readback import INTERVAL  # the prediction's central interval (issue 16: "the central 90 % interval")
from hil.pipeline.demo import DemoConfig, run_demo


@dataclass(frozen=True)
class Target:
    """One of issue 16's targets: a summary value, how it is compared, the limit."""

    name: str
    op: str  # "<=" or ">="
    limit: float
    text: str  # the target as the table shows it

    def passed(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value <= self.limit if self.op == "<=" else value >= self.limit


@dataclass
class SeedResult:
    """One chip seed's deployment, as measured and predicted (accuracies in [0, 1])."""

    seed: int
    clean: float  # noise-free accuracy of the deployed (trained) model
    predicted_mean: float
    predicted_lo: float  # central 90 % interval of the Monte Carlo draws
    predicted_hi: float
    measured: float  # accuracy with the read-back weights
    devices: int
    verified_devices: int
    pulses_recorded: int  # programming pulses in the run file's tile records (every cell of every tile)
    pulses_unrecorded: int  # SET + RESET pulses the run's ledger booked without a record (0 without interruption)
    ledger_unknown: bool  # the ledger holds "not known" rows (a board without lifetime counters was interrupted)
    pulses_verified: int  # of pulses_recorded, those on write-verified devices
    write_cycles_demo: float  # what `rram demo` counts (pulses on used devices)
    full_wv_profile: float  # devices x the profile's mean write-verify pulses per device (the demo's denominator)
    full_wv_counted: float  # devices x the pulses this run's own verified devices took per device
    full_wv_run: int | None  # pulses a real full write-verify deployment of the seed took (--full-wv)
    full_wv_measured: float | None  # read-back accuracy of that deployment (--full-wv)
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    mc_draws: int = 0
    measured_calibrated: float | None = None  # after per-column calibration (the demo's default)
    ablations: dict[str, float] = field(default_factory=dict)  # final accuracy with one correction switched off
    ks_p: float = math.nan  # KS p of the per-device read-back errors against the profile (readback_stats)
    # the chip at later ages (the demo's `ages`): age, measured, predicted mean and 90 % interval, recalibrated
    later: list[dict[str, float]] = field(default_factory=list)
    errors: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole comparison

    @property
    def final(self) -> float:
        """The deployed network's accuracy: after column calibration where it ran, else as read back."""
        return self.measured if self.measured_calibrated is None else self.measured_calibrated

    @property
    def gap(self) -> float:
        """final - clean (negative: the chip lost accuracy)."""
        return self.final - self.clean

    def gains(self) -> dict[str, float]:
        """Per correction: final accuracy with everything on minus with that one off (calibration: free, same run)."""
        out = {name: self.final - acc for name, acc in self.ablations.items()}
        if self.measured_calibrated is not None and self.ablations:
            out["calibration"] = self.measured_calibrated - self.measured
        return out

    @property
    def inside(self) -> bool:
        return self.predicted_lo <= self.measured <= self.predicted_hi

    @property
    def pulses(self) -> int:
        """Every programming pulse the run file accounts for."""
        return self.pulses_recorded + self.pulses_unrecorded

    @property
    def ratio_profile(self) -> float:
        return self.write_cycles_demo / self.full_wv_profile

    @property
    def ratio_counted(self) -> float:
        return self.pulses / self.full_wv_counted if self.full_wv_counted > 0 else math.nan

    @property
    def ratio_run(self) -> float | None:
        """Pulses against those of the real full write-verify deployment (None without --full-wv)."""
        return None if self.full_wv_run is None else self.pulses / self.full_wv_run

    @property
    def ratio_target(self) -> float:
        """The ratio the write-cycle target is judged on: against the real full-WV run where there is one."""
        return self.ratio_counted if self.ratio_run is None else self.ratio_run

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(final=self.final, gap=self.gap, inside=self.inside, pulses=self.pulses, gains=self.gains())
        d.update(ratio_profile=self.ratio_profile, ratio_counted=self.ratio_counted, ratio_run=self.ratio_run)
        return d


@dataclass
class SummaryRow:
    name: str
    value: float
    text: str  # the value as the table shows it
    target: Target

    @property
    def passed(self) -> bool:
        return self.target.passed(self.value)


def targets(n_seeds: int) -> list[Target]:
    """Issue 16's targets for n seeds (the interval count scales "4 of 5" to ceil(0.8 n))."""
    need = math.ceil(0.8 * n_seeds)
    return [
        Target("mean loss (clean - final)", "<=", 3.0, "<= 3 points"),
        Target("worst loss (clean - final)", "<=", 6.0, "<= 6 points"),
        Target("worst write-cycle ratio", "<=", 0.3, "<= 0.30x"),
        Target("seeds inside the 90% interval", ">=", float(need), f">= {need} of {n_seeds}"),
        Target("mean |measured - predicted mean|", "<=", 2.0, "<= 2 points"),
        Target("seeds with per-device KS p > 0.01", ">=", float(n_seeds), f"{n_seeds} of {n_seeds}"),
    ]


def summarize(results: list[SeedResult]) -> list[SummaryRow]:
    """The summary rows over seeds, each with its target (losses = clean - final, in points; the interval and the
    miss compare the uncalibrated read-back with the prediction, which describes it)."""
    loss = np.array([-100 * r.gap for r in results]) + 0.0  # + 0.0: no "-0.00" for a seed without loss
    ratio = np.array([r.ratio_target for r in results])
    which = "counted" if any(r.ratio_run is None for r in results) else "full-WV run"
    inside = sum(r.inside for r in results)
    miss = np.array([100 * abs(r.measured - r.predicted_mean) for r in results])
    values = [
        (float(loss.mean()), f"{loss.mean():.2f} points"),
        (float(loss.max()), f"{loss.max():.2f} points"),
        (float(ratio.max()), f"{ratio.max():.3f}x ({which})"),  # NaN (no verified device) fails
        (float(inside), f"{inside} of {len(results)}"),
        (float(miss.mean()), f"{miss.mean():.2f} points"),
        (float(sum(r.ks_p > 0.01 for r in results)), f"{sum(r.ks_p > 0.01 for r in results)} of {len(results)}"),
    ]
    return [SummaryRow(t.name, v, text, t) for t, (v, text) in zip(targets(len(results)), values)]


@dataclass(frozen=True)
class PulseCount:
    """Programming pulses of one deployment run file."""

    devices: int
    verified_devices: int
    recorded: int  # sum of the tile records' pulses (every cell of every tile)
    verified: int  # of those, the pulses of used write-verified devices
    unrecorded: int  # SET + RESET pulses in the ledger (any table; -1 "not known" rows count 0)
    unknown: bool  # the ledger has "not known" rows


def count_pulses(deploy_path: Path) -> PulseCount:
    """Count the programming pulses a deployment's run file accounts for: tile records plus the pulse ledger.

    Ledger rows of every table are counted (an interrupted gate calibration's pulses too): an upper bound on
    the unrecorded programming pulses, 0 when nothing was interrupted.
    """
    from hil.characterize.ledger import LEDGER_TABLE
    from hil.characterize.runfile import read_run

    run = read_run(deploy_path)
    tiles = run.data["tiles"]
    used = ~np.isnan(tiles["target"])
    ver = (tiles["verify"] > 0) & used
    pulses = tiles["pulses"].astype(np.int64)
    unrecorded, unknown = 0, False
    if LEDGER_TABLE in run.data:
        rows = run.data[LEDGER_TABLE]
        for kind in ("set", "reset"):
            unrecorded += int(np.maximum(rows[kind], 0).sum())
            unknown |= bool((rows[kind] < 0).any())
    return PulseCount(int(used.sum()), int(ver.sum()), int(pulses.sum()), int(pulses[ver].sum()), unrecorded, unknown)


def full_wv_run(cfg: DemoConfig) -> tuple[int, float]:
    """Deploy the seed's model as the demo does but with every device write-verified: (pulses, measured accuracy)."""
    import inspect

    from hil.pipeline.demo import deploy_stage

    out = cfg.out / "deploy-full-wv.h5"
    full = dataclasses.replace(cfg, swim=1.0, mc_draws=1)  # one draw: only the measured accuracy is wanted
    kwargs: dict[str, Any] = {}
    if "defect_runs" in inspect.signature(deploy_stage).parameters:  # the demo's layout input, where it has one
        kwargs["defect_runs"] = [cfg.out / "form.h5"]
    d = deploy_stage(full, cfg.out / "model.pt", cfg.out / "profile.h5", out, quiet=True, **kwargs)
    c = count_pulses(out)
    return c.recorded + c.unrecorded, float(d["measured"])


ABLATIONS = {  # name -> the DemoConfig change that switches that correction off (calibration needs no new run)
    "mapping": {"defect_aware": False},
    "re-verify": {"reverify": 0},
}


def ablation_run(cfg: DemoConfig, name: str) -> float:
    """Deploy the seed's model again on a fresh copy of its chip with one correction off: the final accuracy."""
    from hil.pipeline.demo import deploy_stage

    off = dataclasses.replace(cfg, mc_draws=1, **ABLATIONS[name])  # one draw: only the measurement is wanted
    out = cfg.out / f"deploy-no-{name}.h5"
    d = deploy_stage(
        off, cfg.out / "model.pt", cfg.out / "profile.h5", out, quiet=True, defect_runs=[cfg.out / "form.h5"]
    )
    return float(d["measured"] if d.get("measured_calibrated") is None else d["measured_calibrated"])


def run_seed(
    cfg: DemoConfig, full_wv: bool = False, echo: Callable[[str], None] = lambda _s: None, ablate: bool = False
) -> SeedResult:
    """Run `rram demo`'s chain for one chip seed (cfg.out: its folder) and score the deployment."""
    t0 = time.perf_counter()
    report = run_demo(cfg, force=True, echo=echo)
    stages = {name: t for name, t, _ in report.stages}
    deploy = next(r for name, _, r in report.stages if name == "deploy")
    lo, hi = deploy["predicted_interval"]  # the central 90 % interval of the prediction's own draws
    c = count_pulses(cfg.out / "deploy.h5")
    full_run: int | None = None
    full_measured: float | None = None
    if full_wv:
        t1 = time.perf_counter()
        full_run, full_measured = full_wv_run(cfg)
        stages["full-WV deploy"] = time.perf_counter() - t1
    ablations = {}
    if ablate:
        for name in ABLATIONS:
            t1 = time.perf_counter()
            ablations[name] = ablation_run(cfg, name)
            stages[f"no-{name} deploy"] = time.perf_counter() - t1
    per = c.verified / c.verified_devices if c.verified_devices else math.nan
    return SeedResult(
        seed=cfg.seed,
        clean=float(deploy["clean"]),
        predicted_mean=float(deploy["predicted_mean"]),
        predicted_lo=lo,
        predicted_hi=hi,
        measured=float(deploy["measured"]),
        devices=c.devices,
        verified_devices=c.verified_devices,
        pulses_recorded=c.recorded,
        pulses_unrecorded=c.unrecorded,
        ledger_unknown=c.unknown,
        pulses_verified=c.verified,
        write_cycles_demo=float(deploy["write_cycles"]),
        full_wv_profile=float(deploy["write_cycles_full_wv"]),
        full_wv_counted=c.devices * per,
        full_wv_run=full_run,
        full_wv_measured=full_measured,
        seconds=time.perf_counter() - t0,
        stage_seconds=stages,
        mc_draws=int(deploy["mc_draws"]),
        measured_calibrated=deploy.get("measured_calibrated"),
        ablations=ablations,
        ks_p=float(deploy["errors"]["ks_p"]),
        later=[aged_row(d) for d in deploy.get("later", [])],
        errors=deploy["errors"],
    )


def aged_row(d: dict[str, Any]) -> dict[str, float]:
    """One later age of a deployment (the demo's `later` entries): the numbers the aged table shows."""
    lo, hi = d["predicted_interval"]
    again = d.get("measured_recalibrated")
    return {
        "age_s": float(d["reread_at_s"]),
        "measured": float(d["measured"]),
        "predicted_mean": float(d["predicted_mean"]),
        "predicted_lo": float(lo),
        "predicted_hi": float(hi),
        "recalibrated": math.nan if again is None else float(again),
    }


def aged_table(results: list[SeedResult]) -> list[str]:
    """Markdown: per later age, each seed's measured accuracy against the prediction's interval (empty: none)."""
    from hil.deploy.reread import age_label

    ages = sorted({row["age_s"] for r in results for row in r.later})
    if not ages:
        return []
    out = [
        "",
        "The chip at later ages (each tile read again before the next reused its cells): measured % "
        "(recalibrated %) against the predicted 90 % interval.",
        "",
    ]
    out.append("| age | " + " | ".join(f"seed {r.seed}" for r in results) + " | inside |")
    out.append("|---|" + "---|" * (len(results) + 1))
    for age in ages:
        cells, inside = [], 0
        for r in results:
            row = next((x for x in r.later if x["age_s"] == age), None)
            if row is None:
                cells.append("-")
                continue
            ok = row["predicted_lo"] <= row["measured"] <= row["predicted_hi"]
            inside += ok
            cells.append(
                f"{_pct(row['measured'])} ({_pct(row['recalibrated'])}) in {_pct(row['predicted_lo'])}-"
                f"{_pct(row['predicted_hi'])}{'' if ok else ' OUT'}"
            )
        out.append(f"| {age_label(age, ' ')} | " + " | ".join(cells) + f" | {inside} of {len(results)} |")
    return out


def run_benchmark(
    seeds: list[int],
    base: DemoConfig,
    full_wv: bool = False,
    echo: Callable[[str], None] = lambda _s: None,
    ablate: bool = False,
) -> list[SeedResult]:
    """Every seed in turn, each in its own folder under base.out (seed<N>)."""
    results = []
    for s in seeds:
        cfg = dataclasses.replace(base, seed=s, out=base.out / f"seed{s}")
        try:
            r = run_seed(cfg, full_wv, echo, ablate)
        except Exception as exc:  # say which seed; the cause stays chained below
            raise RuntimeError(f"chip seed {s} ({cfg.out}): {type(exc).__name__}: {exc}") from exc
        echo(f"seed {s}: measured {100 * r.measured:.1f} %, clean {100 * r.clean:.1f} % ({r.seconds:.0f} s)")
        results.append(r)
    return results


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def format_table(results: list[SeedResult], summary: list[SummaryRow], cfg: DemoConfig) -> str:
    """Markdown: one row per seed, then the summary rows with their targets."""
    full_wv = all(r.full_wv_run is not None for r in results)
    head = [
        "seed",
        "clean %",
        "pred. mean %",
        "pred. 90% interval %",
        "measured %",
        "calibrated %",
        "final-clean",
        "inside",
        "pulses (ledger)",
        "ratio (profile)",
        "ratio (counted)",
        "KS p",
        *(["ratio (full-WV run)", "full-WV measured %"] if full_wv else []),
        "time s",
    ]
    rows = []
    for r in results:
        ledger = f"{r.pulses_unrecorded}{'+?' if r.ledger_unknown else ''}"
        rows.append(
            [
                str(r.seed),
                _pct(r.clean),
                _pct(r.predicted_mean),
                f"{_pct(r.predicted_lo)}-{_pct(r.predicted_hi)}",
                _pct(r.measured),
                "-" if r.measured_calibrated is None else _pct(r.measured_calibrated),
                f"{100 * r.gap:+.1f}",
                "yes" if r.inside else "no",
                f"{r.pulses} ({ledger})",
                f"{r.ratio_profile:.3f}x",
                f"{r.ratio_counted:.3f}x",
                f"{r.ks_p:.2g}",
                *([f"{r.ratio_run:.3f}x", _pct(r.full_wv_measured or math.nan)] if full_wv else []),
                f"{r.seconds:.0f}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    out = [
        f"Deployment on {len(results)} chip seeds ({cfg.rows}x{cfg.cols}, MLP hidden {cfg.hidden}, SWIM "
        f"{100 * cfg.swim:g} %, read-back after {cfg.read_delay:g} s, {results[0].mc_draws} Monte Carlo draws"
        f"{', quick' if cfg.quick else ''}).",
        "pulses: the run file's records + its unrecorded-pulse ledger (in brackets). ratio (profile): the demo's, "
        "used devices' pulses / (devices x the profile's write-verify pulses per device); ratio (counted): pulses / "
        "(devices x the pulses per device this run's verified devices took)"
        + ("; ratio (full-WV run): pulses / those of a deployment verifying every device." if full_wv else "."),
        "",
        line(head),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(line(row) for row in rows),
        "",
    ]
    sw = max(len(s.name) for s in summary)
    vw = max(len(s.text) for s in summary)
    tw = max(len(s.target.text) for s in summary)
    out.append(f"| {'summary':<{sw}} | {'value':>{vw}} | {'target':<{tw}} | result |")
    out.append(f"|{'-' * (sw + 2)}|{'-' * (vw + 2)}|{'-' * (tw + 2)}|--------|")
    for s in summary:
        out.append(f"| {s.name:<{sw}} | {s.text:>{vw}} | {s.target.text:<{tw}} | {'PASS' if s.passed else 'FAIL':<6} |")
    out += aged_table(results)
    gains = gain_rows(results)
    if gains:
        out += [
            "",
            "Gain of each correction: final accuracy with it minus without it, paired over the seeds (points).",
            "",
        ]
        out.append("| correction | mean gain | 95 % CI (t, over seeds) | per seed |")
        out.append("|---|---:|---|---|")
        for g in gains:
            out.append(
                f"| {g.name} | {g.mean:+.2f} | {g.ci[0]:+.2f} to {g.ci[1]:+.2f} | {' '.join(f'{d:+.1f}' for d in g.per_seed)} |"
            )
    return "\n".join(out)


@dataclass(frozen=True)
class Gain:
    """One correction's paired gain over the seeds (points): mean and t-interval of the per-seed differences."""

    name: str
    per_seed: tuple[float, ...]
    mean: float
    ci: tuple[float, float]


def gain_rows(results: list[SeedResult]) -> list[Gain]:
    """The paired gain of each switched-off correction (none without --ablate)."""
    from scipy import stats

    names = sorted({k for r in results for k in r.gains()})
    rows = []
    for name in names:
        d = np.array([100 * r.gains()[name] for r in results if name in r.gains()])
        half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
        rows.append(Gain(name, tuple(float(x) for x in d), float(d.mean()), (d.mean() - half, d.mean() + half)))
    return rows


def parse_seeds(text: str) -> list[int]:
    """'1..5' or '1,2,7' (or a mix: '1..3,9')."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            a, sep, b = part.strip().partition("..")
            seeds += list(range(int(a), int(b) + 1)) if sep else [int(a)]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r} is not a list of distinct seeds >= 0: write e.g. 1..5 or 1,2,3")
    return seeds


def config(args: argparse.Namespace, out: Path) -> DemoConfig:
    """The demo's configuration (its defaults), the quick variant as `rram demo --quick` sets it."""
    cfg = DemoConfig(out=out, quick=args.quick, plots=False)
    if args.quick:
        cfg.epochs, cfg.mc_draws = 8, 50  # what hil/cli/demo.py sets for --quick
    for name in ("rows", "cols", "hidden", "epochs", "mc_draws", "swim"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1..5", help="chip seeds: 1..5 or 1,2,3 (default 1..5)")
    ap.add_argument("--quick", action="store_true", help="the demo's quick variant (smaller runs, fewer epochs, draws)")
    ap.add_argument("--full-wv", action="store_true", help="also deploy with every device verified, count its pulses")
    ap.add_argument("--ablate", action="store_true", help="also deploy each seed without mapping, re-verify: the gains")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write all numbers as JSON (no PATH: stdout)")
    ap.add_argument("--out", type=Path, help="keep the run files in this folder (default: a temporary one)")
    ap.add_argument("--rows", type=int, help="chip rows (default: the demo's)")
    ap.add_argument("--cols", type=int, help="chip columns (default: the demo's)")
    ap.add_argument("--hidden", type=int, help="MLP hidden width (default: the demo's)")
    ap.add_argument("--epochs", type=int, help="training epochs (default: the demo's)")
    ap.add_argument("--mc-draws", dest="mc_draws", type=int, help="Monte Carlo draws (default: the demo's)")
    ap.add_argument("--swim", type=float, help="fraction write-verified (default: the demo's)")
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        ap.error(str(exc))
    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deploy-seeds-")))
        cfg = config(args, out)
        results = run_benchmark(
            seeds, cfg, args.full_wv, echo=lambda s: print(s, file=sys.stderr, flush=True), ablate=args.ablate
        )
    summary = summarize(results)
    table = format_table(results, summary, cfg)
    text = json.dumps(document(results, summary, cfg), indent=1, allow_nan=False)
    if args.json == "-":
        print(text)
    else:
        print(table)
        if args.json:
            Path(args.json).write_text(text + "\n")
    return 0


def document(results: list[SeedResult], summary: list[SummaryRow], cfg: DemoConfig) -> dict[str, Any]:
    """Every number of the benchmark, JSON-able (NaN as null)."""
    doc = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
        "interval": INTERVAL,
        "seeds": [r.to_dict() for r in results],
        "summary": [{"name": s.name, "value": s.value, "target": s.target.text, "passed": s.passed} for s in summary],
        "gains": [dataclasses.asdict(g) for g in gain_rows(results)],
    }
    return _plain(doc)


def _plain(x: Any) -> Any:
    """JSON-able: numpy scalars as Python numbers, NaN and infinities as null (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


if __name__ == "__main__":
    sys.exit(main())
