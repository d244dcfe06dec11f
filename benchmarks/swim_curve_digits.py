"""SWIM versus magnitude/random/gradient selection on digits: accuracy and write cycles per budget.

Trains (or loads) an MLP on the embedded digits, takes a noise profile (a fitted one, or the IBM
ReRAM 1 s polynomials), and prints the curve table plus the smallest SWIM budget whose mean accuracy
is within 1 point of full write-verify, with its write cycles relative to full write-verify.

    python benchmarks/swim_curve_digits.py [--profile p.h5] [--noise-scale 3] [--mc 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _simulated_chip_profile(seed: int) -> Path:
    """Characterize a simulated chip (form, levels, retention, read noise on 16x16 cells) and fit its profile."""
    from hil.characterize import get_procedure
    from hil.characterize.procedure import run_procedure
    from hil.hardware.board import Board
    from hil.pipeline.demo import DemoConfig, _characterize_plan, fit_stage

    folder = Path(tempfile.mkdtemp())
    runs = {}
    with Board.open(f"sim://?seed={seed}&rows=32&cols=32") as board:
        for name, kw in _characterize_plan(DemoConfig(quick=False)):
            if name == "endurance":
                continue
            cls = get_procedure(name)
            runs[name] = folder / f"{name}.h5"
            run_procedure(cls(cls.Params(**kw), board), runs[name], quiet=True)
    return fit_stage(runs, folder / "profile.h5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--profile", type=Path, default=None, help="noise profile (default: characterize and fit a simulated chip)"
    )
    ap.add_argument("--model", type=Path, default=None, help="model.pt (default: train an MLP 64-64-10 for 15 epochs)")
    ap.add_argument("--noise-scale", type=float, default=3.0)
    ap.add_argument("--mc", type=int, default=1000, help="draws per point (rram swim curve's default)")
    ap.add_argument("--fractions", default="0,0.01,0.02,0.05,0.1,0.2,0.5,1")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from calibration.profile import load_profile
    from hil.deploy.swim_report import curve_table
    from models.checkpoint import load_model, save_checkpoint
    from models.config import TrainConfig
    from models.data.datasets import load_dataset
    from models.swim.planning import SwimPlanner
    from models.training import train

    profile = load_profile(args.profile) if args.profile else load_profile(_simulated_chip_profile(args.seed))
    if args.model:
        model, ckpt = load_model(args.model)
    else:
        tc = TrainConfig(
            model="mlp", model_kwargs={"hidden": [64]}, data="digits", epochs=15, seed=args.seed, progress=False
        )
        res = train(tc, log=lambda _s: None)
        path = Path(tempfile.mkdtemp()) / "mlp.pt"
        save_checkpoint(res.checkpoint, path)
        model, ckpt = load_model(path)
    ds = load_dataset("digits")
    t0 = time.perf_counter()
    planner = SwimPlanner(
        model, profile, ds.x_test, ds.y_test, mc_draws=args.mc, seed=args.seed, noise_scale=args.noise_scale
    )
    planner.sensitivity([(ds.x_train, ds.y_train)], max_samples=2000)
    fractions = [float(f) for f in args.fractions.split(",")]
    points = planner.curve(fractions)
    print(curve_table(points))
    full = next(p for p in points if p.method == "swim" and p.fraction == 1.0)
    ok = [p for p in points if p.method == "swim" and p.mean >= full.mean - 0.01]
    best = min(ok, key=lambda p: p.fraction)
    print(
        f"\nSWIM within 1 point of full write-verify ({100 * full.mean:.2f}%) at {100 * best.fraction:.1f}% of weights "
        f"verified: {best.cycles_norm:.3f}x the write cycles of full write-verify"
    )
    print(
        f"({time.perf_counter() - t0:.1f} s, {args.mc} draws per point, {planner.evaluations} Monte Carlo runs for "
        f"{len(points)} points (the same mask shares one), noise scale {args.noise_scale})"
    )


if __name__ == "__main__":
    main()
