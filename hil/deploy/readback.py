"""Accuracy of a network deployed on the chip: weights rebuilt from read-back conductances.

The measured accuracy is set beside the Monte Carlo prediction of the same deployment (same verify
marks, same read delay) from the chip's noise profile, so a user sees whether the profile predicts
the chip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from hil.characterize.runfile import RunData, RunFileError, read_run
from hil.deploy.placement import weights_from_conductances
from hil.deploy.plan import Plan, load_plan


@dataclass
class DeployedAccuracy:
    measured: float  # accuracy with the read-back weights
    clean: float  # accuracy of the trained (floating-point) network
    predicted_mean: float
    predicted_std: float
    predicted_kpp1: float
    predicted_ci95: tuple[float, float]
    mc_draws: int
    within_spread: bool  # measured inside [1% KPP, mean + 3 std] of the prediction
    write_cycles: float
    write_cycles_full_wv: float  # estimate for write-verifying every device (profile pulses/device)

    def to_dict(self) -> dict:
        return asdict(self)


def measured_matrices(plan: Plan, run: RunData) -> list[np.ndarray]:
    """Assemble each layer's device matrix from the read-back conductances of its tiles (through their layout)."""
    tiles = run.data["tiles"]
    if len(tiles) < len(plan.tiles):
        raise RunFileError(f"{run.path} holds {len(tiles)} of {len(plan.tiles)} tiles: finish it with --resume first")
    mats = [np.full(lp.targets.shape, np.nan) for lp in plan.layers]
    for rec in tiles[: len(plan.tiles)]:
        ti = int(rec["tile"])
        t = plan.tiles[ti]
        nr, nc = int(t["nr"]), int(t["nc"])
        rows, cols = plan.tile_cells(ti)  # the tile's layout on the array, undone here
        g = rec["g_read"].reshape(plan.rows, plan.cols)[np.ix_(rows, cols)]
        mats[int(t["layer"])][t["r0"] : t["r0"] + nr, t["c0"] : t["c0"] + nc] = g
    for lp, m in zip(plan.layers, mats):
        if np.isnan(m).any():
            raise RunFileError(f"{run.path}: layer {lp.name} has devices that were never read back")
    return mats


def verify_masks(plan: Plan) -> dict[str, torch.Tensor]:
    """Per-weight verify marks (the even device columns hold G+, whose mark equals the pair's)."""
    out = {}
    for lp in plan.layers:
        pos = lp.verify[:, 0::2]  # (fan_in, out)
        out[lp.name] = torch.as_tensor(pos.T.reshape(lp.shape).copy())
    return out


def predicted_stuck_fractions(plan: Plan, expected: tuple[float, float]) -> tuple[float, float]:
    """The stuck fractions the prediction draws for this chip: a plan placed around the chip's defect map keeps
    its known defects where they do no harm, so only what the map did not catch is left to chance (issue 16
    item 4); a plan placed without one draws the profile's `expected` fractions."""
    placement = plan.meta.get("placement") or {}
    if plan.defects is None or not placement.get("defect_aware"):
        return float(expected[0]), float(expected[1])
    return plan.defects.unknown_stuck_fractions(expected)


def _accuracy(model: torch.nn.Module, weights: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        correct = 0
        for i in range(0, len(x), 1000):
            out = functional_call(model, weights, (x[i : i + 1000],)) if weights else model(x[i : i + 1000])
            correct += int((out.argmax(1) == y[i : i + 1000]).sum())
    return correct / len(y)


def evaluate_deployed(
    deploy_path: str | Path, mc: int = 200, seed: int = 0, progress: bool = False, factory: str | None = None
) -> DeployedAccuracy:
    """Measured accuracy of a deployment and its Monte Carlo prediction (progress: bar or line for the draws).

    ``factory``: the model file's own "pkg.mod:factory" architecture, when it names one.
    """
    from calibration.profile import load_profile
    from models.checkpoint import load_model
    from models.data.datasets import load_dataset
    from models.montecarlo import evaluate_mc
    from models.noise.profile_noise import ProfileNoise
    from models.swim.planning import MissingPulses, pulses_per_device

    run = read_run(deploy_path)
    if run.procedure != "program":
        raise RunFileError(f"{deploy_path} is a {run.procedure!r} run, not a deployment (rram program)")
    plan = load_plan(run.params["plan"])
    model, ckpt = load_model(plan.meta["model_file"], factory=factory)
    model.eval()
    ds = load_dataset(ckpt["data"]["name"], ckpt["data"].get("root"))
    weights = weights_from_conductances(plan, measured_matrices(plan, run))
    measured = _accuracy(model, weights, ds.x_test, ds.y_test)
    clean = _accuracy(model, {}, ds.x_test, ds.y_test)
    profile = load_profile(plan.meta["profile_file"])
    noise = ProfileNoise.from_profile(
        profile,
        float(run.params["read_delay"]),
        mapping="analog",
        verified_mask=verify_masks(plan),
        stuck_fractions=predicted_stuck_fractions(plan, profile.stuck_fractions),
    )
    pred = evaluate_mc(model, ds.x_test, ds.y_test, noise, mc, seed=seed, kpp=(1.0,), progress=progress)
    kpp1 = float(pred.kpp[1.0])
    ci_low, ci_high = pred.ci95
    pulses = run.data["tiles"]["pulses"]
    cycles = float(pulses[~np.isnan(run.data["tiles"]["target"])].sum())
    try:
        full = plan.n_devices * pulses_per_device(profile, True)
    except MissingPulses as exc:
        raise RunFileError(f"{plan.meta['profile_file']}: {exc}") from None
    return DeployedAccuracy(
        measured,
        clean,
        pred.mean,
        pred.std,
        kpp1,
        (ci_low, ci_high),
        mc,
        bool(kpp1 <= measured <= pred.mean + 3 * pred.std),
        cycles,
        full,
    )
