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
    # after per-column affine calibration fitted at programming time (at a later age: after global drift
    # compensation too); None: not asked for
    measured_calibrated: float | None = None
    measured_recalibrated: float | None = None  # at a later age: calibrated again on that age's first read
    calibration_inputs: int = 0  # training inputs the calibration was fitted on
    age_s: float = 0.0  # mean time from programming to the reads judged (s)
    reads: int = 1  # chip reads the measurement used (one per batch of read_batch inputs)

    def to_dict(self) -> dict:
        return asdict(self)


def measured_matrices(plan: Plan, run: RunData) -> list[np.ndarray]:
    """Assemble each layer's device matrix from the read-back conductances of its tiles (through their layout)."""
    tiles = run.data["tiles"]
    if len(tiles) < len(plan.tiles):
        raise RunFileError(f"{run.path} holds {len(tiles)} of {len(plan.tiles)} tiles: finish it with --resume first")
    by_tile = {int(rec["tile"]): rec["g_read"] for rec in tiles[: len(plan.tiles)]}
    return _assemble(plan, lambda ti: by_tile[ti], str(run.path))


def matrices_from_cells(plan: Plan, g_cells: np.ndarray, where: str) -> list[np.ndarray]:
    """Each layer's device matrix from one read of the plan's rows x cols cells (row-major), e.g. a reread."""
    return _assemble(plan, lambda _ti: g_cells, where)


def _assemble(plan: Plan, g_of_tile, where: str) -> list[np.ndarray]:
    """Layer matrices from each tile's cells (rows x cols, row-major), the tiles' layouts undone."""
    mats = [np.full(lp.targets.shape, np.nan) for lp in plan.layers]
    for ti, t in enumerate(plan.tiles):
        nr, nc = int(t["nr"]), int(t["nc"])
        rows, cols = plan.tile_cells(ti)  # the tile's layout on the array, undone here
        g = np.asarray(g_of_tile(ti)).reshape(plan.rows, plan.cols)[np.ix_(rows, cols)]
        mats[int(t["layer"])][t["r0"] : t["r0"] + nr, t["c0"] : t["c0"] + nc] = g
    for lp, m in zip(plan.layers, mats):
        if np.isnan(m).any():
            raise RunFileError(f"{where}: layer {lp.name} has devices that were never read back")
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


@dataclass
class ChipReads:
    """The reads an evaluation uses: weights per read (read k serves the k-th batch of inputs) and their age."""

    weights: list[dict[str, torch.Tensor]]
    age_s: float  # mean time from a tile's programming to the first read
    tiles: np.ndarray  # tile records whose g_read is the first read (per-device error check)
    source: str


def deployment_reads(plan: Plan, run: RunData) -> ChipReads:
    """The deployment's own read-back: one read, `read_delay` after each tile's programming."""
    tiles = run.data["tiles"][: len(plan.tiles)]
    weights = weights_from_conductances(plan, measured_matrices(plan, run))
    return ChipReads([weights], float(run.params["read_delay"]), tiles, str(run.path))


def reread_reads(plan: Plan, run: RunData, reread_path: str | Path) -> ChipReads:
    """A later reread of the deployment (hil.deploy.reread): its reads, their age from each tile's programming."""
    rr = read_run(reread_path)
    if rr.procedure != "reread":
        raise RunFileError(f"{reread_path} is a {rr.procedure!r} run, not a reread (rram reread)")
    if Path(rr.params["deploy"]).resolve() != Path(run.path).resolve():
        raise RunFileError(
            f"{reread_path} rereads {rr.params['deploy']}, not {run.path}: give the reread of this deployment"
        )
    reads = rr.data["reads"]
    if len(reads) < int(rr.params["reads"]):
        raise RunFileError(f"{reread_path} holds {len(reads)} of {rr.params['reads']} reads: finish it with --resume")
    weights = [weights_from_conductances(plan, matrices_from_cells(plan, r["g"], str(reread_path))) for r in reads]
    tiles = run.data["tiles"][: len(plan.tiles)].copy()
    tiles["g_read"] = reads["g"][0]  # every tile's cells as the first reread saw them (unused cells are NaN)
    age = float(np.mean(reads["t"][0] - np.maximum(tiles["t_prog"], 0.0)))
    return ChipReads(weights, age, tiles, str(reread_path))


def aged_reads(plan: Plan, run: RunData, age_s: float) -> ChipReads:
    """The deployment's reads of every tile at `age_s` after its programming (its param ``ages``, table "aged")."""
    aged = run.data.get("aged")
    ages = sorted({float(a) for a in aged["age"]}) if aged is not None and len(aged) else []
    if not any(np.isclose(a, age_s) for a in ages):
        have = ", ".join(f"{a:g}" for a in ages) or "none"
        raise RunFileError(
            f"{run.path} has no reads at age {age_s:g} s (it has: {have}); deploy with --ages (e.g. --ages 1h,1d) to take them"
        )
    assert aged is not None
    n_reads = int(run.params.get("reads", 1))
    rows = aged[np.isclose(aged["age"], age_s)]
    last = {(int(r["tile"]), int(r["read"])): r for r in rows}  # a resumed tile's reread replaces the first
    missing = [(ti, k) for ti in range(len(plan.tiles)) for k in range(n_reads) if (ti, k) not in last]
    if missing:
        raise RunFileError(f"{run.path}: tile {missing[0][0]} has no read {missing[0][1]} at age {age_s:g} s")
    weights = [
        weights_from_conductances(plan, _assemble(plan, lambda ti, k=k: last[(ti, k)]["g"], str(run.path)))
        for k in range(n_reads)
    ]
    tiles = run.data["tiles"][: len(plan.tiles)].copy()
    by_tile = {int(rec["tile"]): i for i, rec in enumerate(tiles)}
    for ti in range(len(plan.tiles)):
        tiles["g_read"][by_tile[ti]] = last[(ti, 0)]["g"]
    age = float(np.mean([last[(int(r["tile"]), 0)]["t"] - max(float(r["t_prog"]), 0.0) for r in tiles]))
    return ChipReads(weights, age, tiles, f"{run.path} at {age_s:g} s")


def _accuracy_per_read(
    model: torch.nn.Module, weights: list[dict], x: torch.Tensor, y: torch.Tensor, batch: int
) -> float:
    """Accuracy with read k's weights on the k-th batch of `batch` inputs (the reads cover the inputs in order)."""
    correct = 0.0
    for k, w in enumerate(weights):
        xs, ys = x[k * batch : (k + 1) * batch], y[k * batch : (k + 1) * batch]
        if len(ys):
            correct += _accuracy(model, w, xs, ys) * len(ys)
    return correct / len(y)


def evaluate_deployed(
    deploy_path: str | Path,
    mc: int = 1000,
    seed: int = 0,
    progress: bool = False,
    factory: str | None = None,
    calibrate: bool = False,
    reread: str | Path | None = None,
    age_s: float | None = None,
) -> DeployedAccuracy:
    """Measured accuracy of a deployment and its Monte Carlo prediction (progress: bar or line for the draws).

    The prediction draws the chip (programming, relaxation to the reads' age, the defects the plan's map did
    not catch) once per draw and a fresh read of it per batch of ``read_batch`` test inputs, as the measurement
    gives each batch its own read (the deployment's read-back is one read: one batch holds the whole test set;
    a reread with N reads gives N batches), so read noise is counted once and redrawn per read.
    ``age_s``: judge the network as the deployment's own reads at that age saw it (`rram program --age`);
    ``reread``: as a later reread (`rram reread`) saw it, at its age.
    ``calibrate``: also the accuracy after per-column affine calibration fitted at programming time on the
    first training inputs (hil.deploy.column_calibration), the digital periphery's correction; at a later
    age the global drift compensation (a reference input's output at t0 against now) comes first. The
    prediction describes the deployment without them.
    ``factory``: the model file's own "pkg.mod:factory" architecture, when it names one.
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
    at_t0 = deployment_reads(plan, run)
    if reread is not None and age_s is not None:
        raise ValueError("give an age of the deployment's own reads or a reread, not both")
    reads = at_t0
    if reread is not None:
        reads = reread_reads(plan, run, reread)
    elif age_s is not None:
        reads = aged_reads(plan, run, age_s)
    n_test = len(ds.y_test)
    read_batch = -(-n_test // len(reads.weights))  # ceil: read k serves inputs k*batch ... (k+1)*batch - 1
    measured = _accuracy_per_read(model, reads.weights, ds.x_test, ds.y_test, read_batch)
    clean = _accuracy(model, {}, ds.x_test, ds.y_test)
    calibrated, recalibrated, n_cal = None, None, 0
    if calibrate:
        from hil.deploy.column_calibration import apply_columns, calibrate_columns, compensate_drift, drift_reference

        n_cal = min(CALIBRATION_INPUTS, len(ds.x_train))
        x_cal = ds.x_train[:n_cal]
        corrected0, fits = calibrate_columns(model, at_t0.weights[0], x_cal)
        if reads is at_t0:
            corrected = [corrected0]
        else:
            ref = drift_reference(model, at_t0.weights[0], x_cal)
            corrected = [apply_columns(model, compensate_drift(model, w, ref)[0], fits) for w in reads.weights]
            _, fits_now = calibrate_columns(model, reads.weights[0], x_cal)  # the periphery calibrated again now
            again = [apply_columns(model, w, fits_now) for w in reads.weights]
            recalibrated = _accuracy_per_read(model, again, ds.x_test, ds.y_test, read_batch)
        calibrated = _accuracy_per_read(model, corrected, ds.x_test, ds.y_test, read_batch)
    profile = load_profile(plan.meta["profile_file"])
    stuck = predicted_stuck_fractions(plan, profile.stuck_fractions)
    masks = verify_masks(plan)
    chip = ProfileNoise.from_profile(
        profile, reads.age_s, mapping="analog", verified_mask=masks, stuck_fractions=stuck, read=False
    )
    fresh_read = ProfileNoise.from_profile(
        profile, reads.age_s, mapping="analog", verified_mask=masks, programming=False
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
    errors = readback_errors(plan, reads.tiles, profile, reads.age_s, stuck)
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
        measured_recalibrated=recalibrated,
        calibration_inputs=n_cal,
        age_s=reads.age_s,
        reads=len(reads.weights),
    )
