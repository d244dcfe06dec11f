"""`rram demo`: the whole pipeline on the embedded simulated board, from a pristine chip onward.

Each stage writes its files into one output folder and adds a line to the summary, so a newcomer
sees what every part of the stack produces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from firmware_protocol.fileformat import json_text
from hil.characterize import get_procedure
from hil.characterize.procedure import run_procedure
from hil.hardware.board import Board

MARKER = ".rram-demo"


@dataclass
class DemoConfig:
    out: Path = Path("rram-demo")
    seed: int = 1
    rows: int = 32
    cols: int = 32
    quick: bool = False  # smaller regions and budgets (tests)
    plots: bool = True
    hidden: int = 24  # MLP hidden width (small enough to program quickly)
    epochs: int = 20
    swim: float = 0.1  # fraction of weights write-verified
    read_delay: float = 1.0  # s between programming and read-back
    mc_draws: int = 1000  # >= 368: the 1 % KPP gets a two-sided 95 % order-statistic interval
    # the deployment's three corrections, each switchable to measure its gain (benchmarks/deploy_seeds.py --ablate)
    defect_aware: bool = True  # place the tiles around the form run's defect map
    reverify: int = 2  # program-settle-verify rounds (0: write-verify once)
    calibrate: bool = True  # per-column affine calibration after read-back (128 training inputs)
    ages: tuple[float, ...] = (3600.0, 86400.0, 365.25 * 86400.0)  # tiles read again at 1 h, 1 day, 1 year
    reread_reads: int = 4  # reads of each tile at each age: each serves a quarter of the test inputs


@dataclass
class DemoReport:
    stages: list[tuple[str, float, dict]] = field(default_factory=list)

    def add(self, name: str, seconds: float, result: dict) -> None:
        self.stages.append((name, seconds, result))


def prepare_folder(out: Path, force: bool) -> None:
    """Create the demo folder; reuse one the demo made earlier; refuse a foreign non-empty folder."""
    if out.exists():
        if any(out.iterdir()) and not (out / MARKER).exists() and not force:
            raise FileExistsError(f"{out} exists and was not made by `rram demo` (use --force or another --out)")
    else:
        out.mkdir(parents=True)
    (out / MARKER).write_text("made by rram demo\n")


def _characterize_plan(cfg: DemoConfig) -> list[tuple[str, dict]]:
    from hil.deploy import DeploySettings

    n = 8 if cfg.quick else 16
    region = f"0:{n},0:{n}"
    dead = dict(skip_unformed=True)  # after forming the whole chip, a cell still not formed is dead: left out
    # the verified law measured with the deployment's own program-settle-verify (deploy_stage's settings)
    deployed = DeploySettings(reverify=cfg.reverify)
    verify = dict(tol=deployed.tol_s, max_pulses=deployed.max_pulses, settle=deployed.settle_s, reverify=cfg.reverify)
    return [
        ("form", dict(cells=f"0:{cfg.rows},0:{cfg.cols}")),  # the whole chip: its defect map matters for deployment
        (
            "endurance",
            dict(
                cells=f"0:{n // 2},0:{n // 2}",
                cycles=2_000 if cfg.quick else 100_000,
                read_every=100 if cfg.quick else 1_000,
                **dead,
            ),
        ),
        ("retention", dict(cells=region, t_last=1e4 if cfg.quick else 1e5, times=6 if cfg.quick else 11, **dead)),
        ("levels", dict(cells=region, read_times="1,10,100" if cfg.quick else "1,10,100,1000,10000", **verify, **dead)),
        ("read-noise", dict(cells=f"0:{n // 2},0:{n}", reads=20 if cfg.quick else 100, **dead)),
    ]


Show = Callable[[object, str], str]  # (SI value, unit) -> text, e.g. (1.93e-05, "S") -> "19.3 µS"


def _plain(value: object, unit: str) -> str:
    """The headline values without the CLI's formatter (hil/cli/report.py): SI with their units."""
    if value is None:
        return "none"
    if unit == "%" and isinstance(value, (int, float)):
        return f"{100 * value:.1f} %"
    if isinstance(value, float):
        return f"{value:.3g} {unit}".rstrip()
    return f"{value} {unit}".rstrip()


def run_demo(
    cfg: DemoConfig, force: bool = False, echo: Callable[[str], None] = print, show: Show = _plain
) -> DemoReport:
    """Characterize the simulated chip, fit its profile, train on it, deploy with SWIM, read back, report.

    `show` formats the headline values (the CLI passes hil/cli/report.py's `quantity_text`)."""
    prepare_folder(cfg.out, force)
    report = DemoReport()
    # a throwaway chip (persist=0): the demo always starts pristine and never wears the user's stored chip
    url = f"sim://?seed={cfg.seed}&rows={cfg.rows}&cols={cfg.cols}&persist=0"
    runs: dict[str, Path] = {}
    with Board.open(url) as board:
        echo(f"board: {board.info.board_id} {board.rows}x{board.cols}, session {board.session_id:08x} ({url})")
        for name, kwargs in _characterize_plan(cfg):
            cls = get_procedure(name)
            path = cfg.out / f"{name}.h5"
            t0 = time.perf_counter()
            outcome = run_procedure(cls(cls.Params(**kwargs), board), path, force=True, quiet=not cfg.plots)
            runs[name] = path
            report.add(f"characterize {name}", time.perf_counter() - t0, outcome.summary)
            echo(f"  {name:<11} -> {path}  {_headline(name, outcome.summary, show)}")
    t0 = time.perf_counter()
    profile_path = fit_stage(runs, cfg.out / "profile.h5")
    report.add("fit", time.perf_counter() - t0, {"profile": str(profile_path)})
    echo(f"  profile    -> {profile_path}  {_profile_headline(profile_path, show)}")
    t0 = time.perf_counter()
    model_path, train_summary = train_stage(cfg, profile_path, cfg.out / "model.pt")
    report.add("train", time.perf_counter() - t0, train_summary)
    echo(f"  model      -> {model_path}  {_train_headline(train_summary, show)}")
    t0 = time.perf_counter()
    deploy = deploy_stage(
        cfg, model_path, profile_path, cfg.out / "deploy.h5", quiet=not cfg.plots, defect_runs=[runs["form"]]
    )
    report.add("deploy", time.perf_counter() - t0, deploy)
    echo(f"  deploy     -> {cfg.out / 'deploy.h5'}  {_deploy_headline(deploy, show)}")
    if deploy["later"]:
        echo(f"  aged       -> {cfg.out / 'deploy.h5'} (table aged)  {_aged_headline(deploy['later'], show)}")
    if cfg.plots:
        t0 = time.perf_counter()
        figures = _plot(runs, cfg.out / "figures")
        report.add("plot", time.perf_counter() - t0, {"figures": len(figures)})
        echo(f"  figures    -> {cfg.out / 'figures'} ({len(figures)} PNG)")
    (cfg.out / "summary.json").write_text(
        json_text([{"stage": s, "seconds": t, **r} for s, t, r in report.stages], indent=1)
    )
    return report


def fit_stage(runs: dict[str, Path], path: Path) -> Path:
    """Fit the noise profile of the simulated chip from the runs just made."""
    from calibration.profile import save_profile
    from hil.pipeline.run_datasets import fit_runs

    profile, _ = fit_runs([runs[k] for k in ("form", "levels", "retention", "read-noise", "endurance") if k in runs])
    save_profile(profile, path, overwrite=True)
    return path


def _profile_headline(path: Path, show: Show) -> str:
    import numpy as np

    from calibration.profile import load_profile

    p = load_profile(path)
    mid = np.array([(p.g_min + p.g_max) / 2])
    best = min(p.families.items(), key=lambda kv: kv[1].aic)[0] if p.families else "none"
    return (
        f"sigma at mid-window: open-loop {show(float(p.programming_sigma(mid)[0]), 'S')}, "
        f"write-verify {show(float(p.programming_sigma(mid, verified=True)[0]), 'S')}; best family {best}"
    )


def train_stage(cfg: DemoConfig, profile_path: Path, path: Path) -> tuple[Path, dict]:
    """Train a small MLP on the embedded digits with noise injection from the fitted profile."""

    from models.checkpoint import save_checkpoint
    from models.config import TrainConfig
    from models.data.datasets import load_dataset
    from models.montecarlo import evaluate_mc
    from models.noise.factory import noise_from_profile
    from models.training import train

    noise = {"family": "profile", "path": str(profile_path.resolve()), "t_s": cfg.read_delay, "mapping": "analog"}
    tc = TrainConfig(
        model="mlp",
        model_kwargs={"hidden": [cfg.hidden]},
        data="digits",
        method="noise",
        noise=noise,
        epochs=cfg.epochs,
        seed=cfg.seed,
        progress=False,
        checkpoint=None,
    )
    result = train(tc, log=lambda _s: None)
    save_checkpoint(result.checkpoint, path)
    ds = load_dataset("digits")
    nz = noise_from_profile(profile_path, t_s=cfg.read_delay, mapping="analog")
    mc = evaluate_mc(result.model.cpu(), ds.x_test, ds.y_test, nz, cfg.mc_draws, seed=cfg.seed, kpp=(1.0,))
    lo, hi = mc.kpp_ci.get(1.0, (float("nan"), float("nan")))
    return path, {
        "clean": mc.clean_accuracy,
        "noisy_mean": mc.mean,
        "kpp1": mc.kpp[1.0],
        "kpp1_ci": [lo, hi],
        "kpp1_ci_coverage": mc.kpp_ci_coverage.get(1.0, float("nan")),
        "draws": mc.n_draws,
    }


def deploy_stage(
    cfg: DemoConfig, model_path: Path, profile_path: Path, out: Path, quiet: bool, defect_runs: list[Path] | None = None
) -> dict:
    """Program the model onto a fresh copy of the simulated chip with SWIM, read back, evaluate.

    ``defect_runs``: the chip's form run (whole chip), whose defect map the layout avoids."""
    from hil.deploy import DeploySettings, default_plan_path, deploy_model
    from hil.deploy.plan import load_plan
    from hil.deploy.readback import evaluate_deployed

    url = f"sim://?seed={cfg.seed}&rows={cfg.rows}&cols={cfg.cols}&persist=0"
    settings = DeploySettings(
        fraction=cfg.swim,
        read_delay_s=cfg.read_delay,
        defect_aware=cfg.defect_aware,
        reverify=cfg.reverify,
        ages_s=cfg.ages,
        reads=cfg.reread_reads,
    )
    summary = deploy_model(
        model_path,
        profile_path,
        url,
        out,
        settings,
        force=True,
        quiet=quiet,
        defect_runs=defect_runs or (),
    )
    acc = evaluate_deployed(out, mc=cfg.mc_draws, seed=cfg.seed, calibrate=cfg.calibrate)
    later = [
        {
            "reread_at_s": age,
            **evaluate_deployed(out, mc=cfg.mc_draws, seed=cfg.seed, calibrate=cfg.calibrate, age_s=age).to_dict(),
        }
        for age in cfg.ages
    ]
    placement = load_plan(default_plan_path(out)).meta.get("placement")
    return {**acc.to_dict(), "swim_fraction": cfg.swim, "program": summary, "placement": placement, "later": later}


def _aged_headline(later: list[dict], show: Show) -> str:
    """Measured (calibrated) against predicted at each later age of the deployed chip."""
    from hil.deploy.reread import age_label

    parts = []
    for d in later:
        lo, hi = d["predicted_interval"]
        cal, again = d.get("measured_calibrated"), d.get("measured_recalibrated")
        cal_text = "" if cal is None else f" (drift-compensated {show(cal, '%')}, recalibrated {show(again, '%')})"
        parts.append(
            f"{age_label(float(d['reread_at_s']), ' ')}: measured {show(d['measured'], '%')}{cal_text} vs predicted "
            f"{show(d['predicted_mean'], '%')} ({show(lo, '%')} to {show(hi, '%')})"
        )
    return "; ".join(parts)


def _train_headline(s: dict, show: Show) -> str:
    return (
        f"clean {show(s['clean'], '%')}, noisy mean {show(s['noisy_mean'], '%')}, "
        f"1% KPP {show(s['kpp1'], '%')} ({_kpp_interval(s, show)}{s['draws']} draws)"
    )


def _kpp_interval(s: dict, show: Show) -> str:
    """'95% interval a to b, ' of the 1 % KPP (order statistics), or its real coverage when the draws are too few."""
    lo, hi = s.get("kpp1_ci", (float("nan"), float("nan")))
    cover = s.get("kpp1_ci_coverage", float("nan"))
    if not (lo == lo and hi == hi):  # NaN: no interval recorded
        return ""
    what = "95% interval" if cover >= 0.95 else f"{100 * cover:.0f}% interval"
    return f"{what} {show(lo, '%')} to {show(hi, '%')}, "


def _deploy_headline(d: dict, show: Show) -> str:
    lo, hi = d["predicted_interval"]
    cal = d.get("measured_calibrated")
    calibrated = "" if cal is None else f", {show(cal, '%')} after column calibration"
    text = (
        f"SWIM {show(d['swim_fraction'], '%')}: measured {show(d['measured'], '%')}{calibrated} (noise-free "
        f"{show(d['clean'], '%')}) vs predicted {show(d['predicted_mean'], '%')} (90% interval "
        f"{show(lo, '%')} to {show(hi, '%')}), {'inside' if d['inside_interval'] else 'OUTSIDE'} it; "
        f"write cycles {d['write_cycles']:.0f} = {d['write_cycles'] / d['write_cycles_full_wv']:.2f}x full write-verify"
    )
    e = d.get("errors")
    if e:
        verdict = "consistent with" if e["consistent"] else "NOT consistent with"
        text += f"; per-device errors {verdict} the profile (KS p {e['ks_p']:.2g}, {e['devices']} devices)"
    p = d.get("placement") or {}
    if p.get("defect_aware") and "naive" in p and "placed" in p:  # what defect-aware placement saved
        n, a = p["naive"], p["placed"]
        text += (
            f"; defect-aware placement left a summed weight error of {a['residual_error']:.3g} max|W| on the "
            f"{sum(p['defective_cells'].values()) - p['defective_cells']['healthy']} known defective cells "
            f"(naive placement {n['residual_error']:.3g})"
        )
    return text


def _plot(runs: dict[str, Path], folder: Path) -> list[Path]:
    from hil.figures.runs import plot_run

    folder.mkdir(exist_ok=True)
    paths: list[Path] = []
    for path in runs.values():
        paths += plot_run(path, folder)
    return paths


def _headline(name: str, s: dict, show: Show) -> str:
    skipped = f", {s['skipped_unformed']} not formed (left out)" if s.get("skipped_unformed") else ""
    if name == "form":
        return f"formed {s['formed']}/{s['cells']}, median V_form {show(s['v_form_median_v'], 'V')}"
    if name == "endurance":
        if "cycles" not in s:
            return f"no formed cell to cycle{skipped}"
        return f"{s['cycles']} cycles, window {show(s['window_first'], 'x')} -> {show(s['window_last'], 'x')}{skipped}"
    if name == "retention":
        if "times_s" not in s:
            return f"nothing programmed{skipped}"
        t = s["times_s"]
        return (
            f"sigma {show(s['sigma_first_s'], 'S')} at {show(t[0], 's')} -> "
            f"{show(s['sigma_last_s'], 'S')} at {show(t[-1], 's')}{skipped}"
        )
    if name == "levels":
        ol, wv = s["open_loop"], s["verified"]
        return (
            f"open-loop sigma {show(ol['sigma_s'], 'S')}, write-verify {show(wv['sigma_s'], 'S')} "
            f"({show(wv['pulses_mean'], 'pulses')}/cell, {show(wv['within_tol'], '%')} within tolerance), "
            f"healthy {s['healthy']}/{s['cells']}"
        )
    if name == "read-noise":
        return f"read sigma {show(s.get('sigma_median_s'), 'S')}{skipped}"
    return ""
