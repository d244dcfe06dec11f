"""`rram evaluate`: Monte Carlo accuracy of a saved model under device noise (mean, CI, KPP with its interval, EKL, ECE)."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from firmware_protocol.fileformat import json_text
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError
from hil.cli.train import aligned, factory_option, noise_options, pct, spec_from_kwargs


@COMMANDS.register("evaluate")
@click.command("evaluate")
@click.argument("model_file", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--deployed",
    type=click.Path(dir_okay=False),
    default=None,
    help="Deployment run file from `rram program`: accuracy with the read-back weights vs the prediction.",
)
@factory_option
@noise_options
@click.option(
    "--mc",
    "n_draws",
    type=int,
    default=1000,
    show_default=True,
    help="Number of noise draws (a 95% interval of the 1% KPP needs >= 368; also with --deployed).",
)
@click.option("--kpp", type=float, multiple=True, help="k (percent) of the k-th percentile performance; repeatable.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=1000, show_default=True)
@click.option("--chunk", "draws_per_chunk", type=int, help="Noise draws per batched forward (default: by memory).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Override the dataset folder stored in the model.")
@click.option(
    "--reread",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="With --deployed: judge the chip as this later reread (`rram reread`) saw it, at its age.",
)
@click.option(
    "--age",
    default=None,
    help="With --deployed: judge the chip as the deployment's own reads at this age saw it (rram program --ages).",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="With --deployed: also the accuracy after per-column gain/offset calibration on 128 training inputs.",
)
@click.option(
    "--analog",
    default=None,
    metavar="PRESET",
    help="Run the Conv/Linear layers on analog crossbar tiles (models.analog): ibm_table1 (the IBM HWA "
    "supplement's Table 1: DAC/ADC, output noise and bound, per-MVM weight noise, tiles, IR drop, drift "
    "compensation) or ideal; input ranges from an ibm_hwa model file, else calibrated on 1000 training inputs.",
)
@click.option(
    "--analog-opt",
    "analog_opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change one field of the --analog preset (e.g. adc_bits=6, ir_drop=0); repeatable.",
)
@click.option("--per-draw", is_flag=True, help="Include every draw's accuracy in the JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate(
    model_file: str | None,
    deployed: str | None,
    factory: str | None,
    n_draws: int,
    kpp: tuple[float, ...],
    seed: int,
    device: str,
    batch_size: int,
    draws_per_chunk: int | None,
    data_root: str | None,
    per_draw: bool,
    reread: str | None,
    age: str | None,
    calibrate: bool,
    analog: str | None,
    analog_opts: tuple[str, ...],
    as_json: bool,
    **noise_kw: Any,
) -> None:
    """Evaluate MODEL_FILE on its test set over noise draws (noise defaults to the model's training noise).

    With --deployed DEPLOY.h5 instead: the network as measured on the chip, next to the Monte Carlo
    prediction for the same deployment from the chip's noise profile.
    """
    if deployed is not None and (analog or analog_opts):
        raise UserError(
            "--analog judges a model file on simulated tiles; a deployment (--deployed) was measured on a chip"
        )
    if analog_opts and not analog:
        raise UserError("--analog-opt changes a preset: give --analog PRESET too")
    tile = _analog_config(analog, analog_opts) if analog else None
    if deployed is not None:
        if model_file is not None:
            raise UserError("give either MODEL_FILE or --deployed, not both")
        age_s = None
        if age is not None:
            from hil.deploy.reread import parse_age

            try:
                age_s = parse_age(age)
            except ValueError as exc:
                raise UserError(f"--age {exc}") from None
        if age_s is not None and reread is not None:
            raise UserError("give --age (the deployment's own reads) or --reread, not both")
        if n_draws < 1:
            raise UserError("--mc must be >= 1")
        _evaluate_deployed(deployed, n_draws, seed, as_json, factory, calibrate, reread, age_s)
        return
    if calibrate or reread or age:
        raise UserError("--calibrate, --age and --reread go with --deployed DEPLOY.h5 (they judge a chip's read-back)")
    if model_file is None:
        raise UserError("give a MODEL_FILE to evaluate (or --deployed DEPLOY.h5)")
    from models.checkpoint import load_model, model_mapping
    from models.data import load_dataset
    from models.montecarlo import evaluate_mc
    from models.noise.factory import mapping_of_spec, noise_from_spec
    from models.training import init_distributed, resolve_device

    if n_draws < 1:
        raise UserError("--mc must be >= 1")
    if any(not 0 < k < 100 for k in kpp):
        raise UserError("--kpp values are percentages strictly between 0 and 100")
    kpp = kpp or (1.0, 5.0)
    rank, _world, local_rank = init_distributed(device)
    dev = resolve_device(device, local_rank)
    model, ckpt = load_model(model_file, dev, factory=factory)
    recorded = model_mapping(ckpt)
    spec = spec_from_kwargs(noise_kw, recorded, model_file)
    if spec is None:
        spec = ckpt.get("noise")
    if spec is None:
        raise UserError(f"{model_file} was trained without noise: give a noise source (--profile, --sigma, ...)")
    noise = noise_from_spec(spec)
    ds = load_dataset(ckpt["data"]["name"], data_root or ckpt["data"]["root"])
    with contextlib.ExitStack() as stack:
        if tile is not None:
            noise = _open_tiles(stack, tile, model, ckpt, ds, seed, dev).draws(noise)
        res = evaluate_mc(
            model,
            ds.x_test,
            ds.y_test,
            noise,
            n_draws,
            seed=seed,
            kpp=tuple(kpp),
            batch_size=batch_size,
            draws_per_chunk=draws_per_chunk,
            device=dev,
            progress=not as_json,
        )
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if rank != 0:
        return
    out = res.to_dict()
    if not per_draw:
        out.pop("accuracies")
    out.update({"model_file": model_file, "noise": spec, "data": ds.name, "seed": seed})
    out["analog"] = tile.to_dict() if tile is not None else None
    if as_json:
        click.echo(json_text(out, indent=2))
        return
    choice = mapping_of_spec(spec)
    on = f", {choice.describe()}" if choice is not None else ""
    on += f", on analog tiles ({analog})" if tile is not None else ""
    click.echo(f"{model_file}: {ds.name} test set ({res.n_samples} samples), {res.n_draws} noise draws{on}")
    rows: list[tuple[str, ...]] = []
    if res.clean_accuracy is not None:
        rows.append(("clean accuracy", pct(res.clean_accuracy), "%"))
    lo, hi = res.ci95
    rows.append(("noisy accuracy", pct(res.mean), "%", f"mean, 95% CI [{pct(lo)}, {pct(hi)}] %"))
    rows.append(("noisy std", pct(res.std), "%", "over the draws"))
    rows += [_kpp_row(res, k) for k in res.kpp]
    rows.append(("worst draw", pct(res.worst), "%"))
    rows.append(("EKL", f"{res.ekl:.4f}", "nat", "mean KL over correct predictions"))
    rows.append(
        (
            "EKL matched",
            f"{res.ekl_matched:.4f}",
            "nat",
            f"the same at the clean network's NLL-optimal temperature T = {res.temperature:.3g}",
        )
    )
    rows.append(("ECE", pct(res.ece), "%", "expected calibration error, 15 bins of max probability, mean over draws"))
    click.echo(aligned(rows))


def _analog_config(preset: str, opts: tuple[str, ...]) -> Any:
    """The --analog preset with the --analog-opt changes; one-line errors for an unknown preset, key or value."""
    from models.analog import analog_config

    changes: dict[str, str] = {}
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--analog-opt {item!r}: give KEY=VALUE (e.g. adc_bits=6)")
        changes[key.strip()] = value.strip()
    try:
        return analog_config(preset, **changes)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--analog: {exc}") from None


def _open_tiles(stack: contextlib.ExitStack, tile: Any, model: Any, ckpt: dict, ds: Any, seed: int, dev: Any) -> Any:
    """Analog tiles on the model's layers: the input ranges a model trained on tiles learned (--analog, ibm_hwa),
    else calibrated on 1000 training inputs."""
    from models.analog import analog_tiles

    state = ckpt.get("train_state") or {}
    ranges = (state.get("analog") or {}).get("input_ranges") or (state.get("method") or {}).get("input_ranges")
    try:
        if ranges:
            return stack.enter_context(analog_tiles(model, tile, input_ranges=ranges, seed=seed))
        return stack.enter_context(analog_tiles(model, tile, calibration=ds.x_train[:1000].to(dev), seed=seed))
    except ValueError as exc:
        raise UserError(f"--analog: {exc}") from None


def _kpp_row(res: Any, k: float) -> tuple[str, ...]:
    """The k-th percentile draw with its order-statistic interval (and what it covers when the draws are too few)."""
    from models.montecarlo import KPP_LEVEL, draws_for_interval

    lo, hi = res.kpp_ci[k]
    note = f"[{pct(lo)}, {pct(hi)}] %, 95% order-statistic interval of the {k:g} % percentile"
    cover = res.kpp_ci_coverage[k]
    if cover < KPP_LEVEL:
        need = draws_for_interval(k / 100.0)
        note = (
            f"[{pct(lo)}, {pct(hi)}] %, covers only {100 * cover:.0f}% (an end is the extreme draw): "
            f"a 95% interval needs --mc >= {need}"
        )
    return (f"KPP {k:g}%", pct(res.kpp[k]), "%", note)


def _evaluate_deployed(
    path: str,
    n_draws: int,
    seed: int,
    as_json: bool,
    factory: str | None,
    calibrate: bool = False,
    reread: str | None = None,
    age_s: float | None = None,
) -> None:
    from hil.deploy.readback import evaluate_deployed
    from hil.deploy.reread import age_label

    res = evaluate_deployed(
        path,
        mc=n_draws,
        seed=seed,
        progress=not as_json,
        factory=factory,
        calibrate=calibrate,
        reread=reread,
        age_s=age_s,
    )
    if as_json:
        click.echo(json_text({"deployed": path, **res.to_dict()}, indent=2))
        return
    lo, hi = res.predicted_interval
    seen = f"reread {reread}" if reread else "its read-back" if age_s is None else "its reads at that age"
    click.echo(f"{path}: network as {seen} saw it, {age_label(res.age_s, ' ')} after programming")
    verdict = "inside" if res.inside_interval else "OUTSIDE"
    e = res.errors
    rows: list[tuple[str, ...]] = [
        ("measured accuracy", pct(res.measured), "%", f"{verdict} the predicted central 90% interval"),
        *(
            [
                (
                    "after calibration",
                    pct(res.measured_calibrated),
                    "%",
                    f"per-column gain and offset fitted on {res.calibration_inputs} training inputs"
                    + (", after global drift compensation" if (reread or age_s is not None) else ""),
                )
            ]
            if res.measured_calibrated is not None
            else []
        ),
        *(
            [
                (
                    "calibrated again",
                    pct(res.measured_recalibrated),
                    "%",
                    "per-column gain and offset fitted anew on this age's first read",
                )
            ]
            if res.measured_recalibrated is not None
            else []
        ),
        ("floating point", pct(res.clean), "%", "the trained network"),
        (
            "predicted mean",
            pct(res.predicted_mean),
            "%",
            f"{res.mc_draws} draws, a fresh read per {res.read_batch} inputs",
        ),
        ("predicted 5th percentile", pct(lo), "%", "the central 90% interval of the draws ..."),
        ("predicted 95th percentile", pct(hi), "%", "... up to here"),
        ("predicted KPP 1%", pct(res.predicted_kpp1), "%"),
        (
            "write cycles",
            f"{res.write_cycles:.0f}",
            "cycles",
            f"{res.write_cycles / res.write_cycles_full_wv:.2f}x full write-verify",
        ),
        (
            "per-device errors KS p",
            f"{e['ks_p']:.3g}",
            "",
            f"{e['devices']} healthy devices vs the profile: "
            + ("consistent" if e["consistent"] else "NOT consistent")
            + f" (A^2 {e['ad_statistic']:.2f})",
        ),
    ]
    for name, g in e["groups"].items():
        rows.append(
            (
                f"  {name.replace('_', '-')} sigma",
                f"{1e6 * g['sigma_measured']:.2f}",
                "µS",
                f"predicted {1e6 * g['sigma_predicted']:.2f} µS; mean error {1e6 * g['mean_measured']:+.2f} µS, "
                f"predicted {1e6 * g['mean_predicted']:+.2f} µS ({g['devices']} devices)",
            )
        )
    rows.append(
        (
            "defects not in the map",
            str(e["defects_new"]),
            "devices",
            f"the prediction expected {e['defects_expected']:.1f}",
        )
    )
    click.echo(aligned(rows))
