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

INTERVAL = 0.9  # the prediction's central interval the measurement is judged against (issue 16)


@dataclass
class DeployedAccuracy:
    """A deployment's measured accuracy beside its Monte Carlo prediction from the chip's profile (in [0, 1])."""

    measured: float  # accuracy with the read-back weights
    clean: float  # accuracy of the trained (floating-point) network
    predicted_mean: float
    predicted_std: float
    predicted_kpp1: float
    predicted_ci95: tuple[float, float]  # t-interval of the predicted mean
    predicted_interval: tuple[float, float]  # central 90 % interval of the predicted draws
    mc_draws: int
    inside_interval: bool  # measured inside the central 90 % interval
    read_batch: int  # test inputs per array read, measured and predicted alike
    write_cycles: float
    write_cycles_full_wv: float  # estimate for write-verifying every device (profile pulses/device)
    errors: dict  # per-device read-back errors against the profile (hil.deploy.readback_stats)
    measured_calibrated: float | None = None  # after per-column affine calibration (None: not asked for)
    calibration_inputs: int = 0  # training inputs the calibration was fitted on

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


CALIBRATION_INPUTS = 128  # training inputs for the per-column calibration (2 parameters per column)


def evaluate_deployed(
    deploy_path: str | Path,
    mc: int = 200,
    seed: int = 0,
    progress: bool = False,
    factory: str | None = None,
    calibrate: bool = False,
) -> DeployedAccuracy:
    """Measured accuracy of a deployment and its Monte Carlo prediction (progress: bar or line for the draws).

    The prediction draws the chip (programming, relaxation to the read-back, the defects the plan's map did
    not catch) once per draw and a fresh read of it per batch of ``read_batch`` test inputs: the measurement
    read the chip once, so one batch holds the whole test set and the read's noise is counted once.
    ``factory``: the model file's own "pkg.mod:factory" architecture, when it names one. ``calibrate``: also
    the accuracy after per-column affine calibration on the first training inputs (hil.deploy.column_calibration),
    the digital periphery's correction; the prediction describes the deployment without it.
    """
    from calibration.profile import load_profile
    from hil.deploy.readback_stats import readback_errors
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
    read_batch = len(ds.y_test)  # one read of the chip served every test input
    calibrated, n_cal = None, 0
    if calibrate:
        from hil.deploy.column_calibration import calibrate_columns

        n_cal = min(CALIBRATION_INPUTS, len(ds.x_train))
        corrected, _ = calibrate_columns(model, weights, ds.x_train[:n_cal])
        calibrated = _accuracy(model, corrected, ds.x_test, ds.y_test)
    clean = _accuracy(model, {}, ds.x_test, ds.y_test)
    profile = load_profile(plan.meta["profile_file"])
    read_delay = float(run.params["read_delay"])
    stuck = predicted_stuck_fractions(plan, profile.stuck_fractions)
    masks = verify_masks(plan)
    chip = ProfileNoise.from_profile(
        profile, read_delay, mapping="analog", verified_mask=masks, stuck_fractions=stuck, read=False
    )
    fresh_read = ProfileNoise.from_profile(
        profile, read_delay, mapping="analog", verified_mask=masks, programming=False
    )
    pred = evaluate_mc(
        model,
        ds.x_test,
        ds.y_test,
        chip,
        mc,
        seed=seed,
        kpp=(1.0,),
        batch_size=read_batch,
        read_noise=fresh_read,
        progress=progress,
    )
    lo, hi = pred.central_interval(INTERVAL)
    pulses = run.data["tiles"]["pulses"]
    cycles = float(pulses[~np.isnan(run.data["tiles"]["target"])].sum())
    try:
        full = plan.n_devices * pulses_per_device(profile, True)
    except MissingPulses as exc:
        raise RunFileError(f"{plan.meta['profile_file']}: {exc}") from None
    planned, norm = plan.meta.get("planned_cycles"), plan.meta.get("planned_cycles_norm")
    if planned and norm:  # the plan's own full write-verify, with the same re-verify touch-ups as the numerator
        full = float(planned) / float(norm)
    errors = readback_errors(plan, run.data["tiles"], profile, read_delay, stuck)
    return DeployedAccuracy(
        measured=measured,
        clean=clean,
        predicted_mean=pred.mean,
        predicted_std=pred.std,
        predicted_kpp1=float(pred.kpp[1.0]),
        predicted_ci95=pred.ci95,
        predicted_interval=(lo, hi),
        mc_draws=mc,
        inside_interval=bool(lo <= measured <= hi),
        read_batch=read_batch,
        write_cycles=cycles,
        write_cycles_full_wv=full,
        errors=errors.to_dict(),
        measured_calibrated=calibrated,
        calibration_inputs=n_cal,
    )
