"""`rram train`: train a network with a training method under a noise model; writes a self-describing model file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from firmware_protocol.fileformat import json_text
from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError

if TYPE_CHECKING:  # torch-free at start-up: the noise factory is imported inside the commands
    from models.noise.factory import MappingChoice


factory_option = click.option(
    "--model",
    "factory",
    metavar="PKG.MOD:FACTORY",
    default=None,
    help="The model file's own architecture factory, when it names one (imported and run: only code you trust).",
)


def noise_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with the mutually exclusive noise sources and their modifiers."""
    opts = [
        click.option("--profile", type=click.Path(dir_okay=False), help="Noise profile .h5 (calibration)."),
        click.option(
            "--t-s",
            "t_s",
            type=float,
            default=0.0,
            show_default=True,
            help="Seconds after programming for the profile's relaxation.",
        ),
        click.option(
            "--mapping",
            type=click.Choice(["auto", "bitsliced", "analog"]),
            default=None,
            help="How a profile's devices hold the weights [default: the model file's; for training: auto = "
            "analog pairs for a continuous profile, bit-sliced on its devices for a per-level one].",
        ),
        click.option(
            "--bits",
            type=click.IntRange(1, 32),
            default=None,
            help="Bit-sliced weight resolution, a multiple of the profile's bits per device "
            "[default: the smallest multiple >= 8].",
        ),
        click.option(
            "--sigma",
            type=float,
            help="NeFT device sigma_d as a fraction of a device's full range (2^K-1 levels; the authors' code): "
            "weight std 0.778*sigma*max|W| for 8-bit weights on 2-bit devices. NeFT eq. 15 in level units: "
            '--noise-json \'{"family": "gaussian", "sigma": S, "convention": "level"}\'.',
        ),
        click.option(
            "--device-model",
            type=click.Choice(["RRAM1", "RRAM2", "FeFET1", "FeFET2"]),
            help="State-dependent noise (NeFT IV-F, the authors' code), with --sigma: t times more on weights with "
            "0.25 < |W|/max|W| < 0.75, sigma divided by sqrt(0.4t^2+0.6) (RRAM2 t=4, FeFET1 2, FeFET2 6).",
        ),
        click.option("--lognormal", type=float, help="Multiplicative W*exp(N(0,s^2)) noise with this s (MTRD)."),
        click.option("--additive", type=float, help="Additive N(0,(eta*max|W|)^2) noise with this eta (MTRD)."),
        click.option("--censor", type=float, help="Right-censor the Gaussian noise at LAM sigma (TRICE)."),
        click.option("--recentre/--no-recentre", default=False, help="Re-centre censored noise to zero mean."),
        click.option("--noise-json", help="Any noise spec as JSON (see models.noise.factory.noise_from_spec)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def spec_from_kwargs(
    kw: dict[str, Any], recorded: MappingChoice | None = None, recorded_from: str = "the model file"
) -> dict[str, Any] | None:
    """Pop the noise options from a command's kwargs and build the spec (a model file's mapping in ``recorded``)."""
    from models.noise.factory import spec_from_options

    keys = (
        "profile",
        "t_s",
        "mapping",
        "bits",
        "sigma",
        "device_model",
        "lognormal",
        "additive",
        "censor",
        "recentre",
        "noise_json",
    )
    try:
        return spec_from_options(**{k: kw.pop(k) for k in keys}, recorded=recorded, recorded_from=recorded_from)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _parse_opts(items: tuple[str, ...], what: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values parsed as JSON when they are valid JSON, else kept as strings.

    These raw values are what the model file records; a method's `Options` converts them to its types.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def method_listing(methods: list[dict[str, Any]]) -> str:
    """`--list-methods` as text: per method its name and description, then its options in aligned columns."""
    from models.methods.options import format_value

    rows = [(o["name"], o["type"], format_value(o["default"]), o["help"]) for m in methods for o in m["options"]]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    name_w = max((len(m["name"]) for m in methods), default=0)
    lines = []
    for m in methods:
        lines.append(f"{m['name']:<{name_w}}  {m['description']}")
        for o in m["options"]:
            cells = (o["name"], o["type"], format_value(o["default"]))
            lines.append("    " + "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)) + f"  {o['help']}")
        if not m["options"]:
            lines.append("    (no options)")
    return "\n".join(lines)


def _check_method(method: str, options: dict[str, Any]) -> None:
    """Refuse an unknown method or a bad `--opt` before any data is loaded (the method parses its options)."""
    from models.methods.registry import get_method

    try:
        get_method(method, **options)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_model(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse an unknown architecture or a `--model-arg` it does not take, or of the wrong type, before any data is loaded."""
    from models.architectures import ARCHITECTURES, check_model_kwargs, is_user_factory

    if is_user_factory(name):
        return  # the user's own code takes what it takes
    if name not in ARCHITECTURES:
        raise UserError(f"unknown --model {name!r} (known: {', '.join(ARCHITECTURES.names())}, or pkg.mod:factory)")
    try:
        check_model_kwargs(name, kwargs)
    except ValueError as exc:
        raise UserError(f"--model-arg: {exc}") from None


@COMMANDS.register("train")
@click.command("train")
@click.option(
    "--model", "model_name", default="cnn", show_default=True, help="cnn | mlp | vgg8 | resnet18 | pkg.mod:factory"
)
@click.option("--model-arg", multiple=True, metavar="KEY=VALUE", help="Keyword argument of the model (repeatable).")
@click.option(
    "--data", default="digits", show_default=True, help="digits | mnist1d | mnist | fashion_mnist | cifar10 | cifar100"
)
@click.option(
    "--data-root", type=click.Path(file_okay=False), help="Folder of an on-disk dataset (mnist1d: where to cache it)."
)
@click.option("--method", default="vanilla", show_default=True, help="Training method (see --list-methods).")
@click.option("--opt", "method_opt", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable).")
@noise_options
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option(
    "--scheduler",
    default="cosine",
    show_default=True,
    help="LR schedule: cosine, none, or step:EPOCHS:GAMMA (the LR times GAMMA every EPOCHS epochs, e.g. step:10:0.8).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision on CUDA.")
@click.option(
    "--val-draws",
    type=int,
    default=5,
    show_default=True,
    help="Noise draws for the noisy validation and test accuracy.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="Share of the training split held out (per class, seeded) for per-epoch validation; 0 = none. "
    "The test split is evaluated once, after training.",
)
@click.option(
    "--analog",
    default=None,
    metavar="PRESET",
    help="Train every method's forward through analog crossbar tiles (models.analog: ibm_table1, ideal), input "
    "ranges learned; IR drop and drift compensation off in training. Judge the result with rram evaluate --analog.",
)
@click.option("--resume", type=click.Path(dir_okay=False, exists=True), help="Continue from this model file.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Model file to write (every epoch).")
@click.option("--force", is_flag=True, help="Replace an existing model file.")
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Progress bars with ETA on a terminal (a plain line per epoch otherwise).",
)
@click.option(
    "--list-methods", is_flag=True, help="Print the training methods with their options (type, default, help) and exit."
)
@click.option("--json", "as_json", is_flag=True, help="Print the per-epoch history (or --list-methods) as JSON.")
def train(
    model_name: str,
    model_arg: tuple[str, ...],
    data: str,
    data_root: str | None,
    method: str,
    method_opt: tuple[str, ...],
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    weight_decay: float,
    scheduler: str,
    seed: int,
    device: str,
    amp: bool,
    val_draws: int,
    val_fraction: float,
    analog: str | None,
    resume: str | None,
    output: str | None,
    force: bool,
    progress: bool,
    list_methods: bool,
    as_json: bool,
    **noise_kw: Any,
) -> None:
    """Train a network robust to device noise (run under torchrun for data-parallel training)."""
    if list_methods:
        from models.methods.registry import describe_methods

        methods = describe_methods()
        click.echo(json_text(methods, indent=2) if as_json else method_listing(methods))
        return
    if output is None:
        raise UserError("give the model file to write with -o/--output")
    _check_output(output, resume, force)
    from models.checkpoint import save_checkpoint
    from models.config import TrainConfig
    from models.noise.factory import mapping_of_spec
    from models.training import train as run_training

    method_options = _parse_opts(method_opt, "--opt")
    _check_method(method, method_options)
    model_kwargs = _parse_opts(model_arg, "--model-arg")
    _check_model(model_name, model_kwargs)
    noise_kw_profile = noise_kw.get("profile")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UserError("--epochs and --batch-size must be >= 1 and --lr > 0")
    if scheduler not in ("cosine", "none"):
        from models.training import parse_step_schedule

        try:
            parse_step_schedule(scheduler)
        except ValueError as exc:
            raise UserError(f"--{exc}") from None
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction:g}: e.g. 0.1, or 0 for no validation")
    if analog is not None:
        from models.analog import PRESETS

        if analog not in PRESETS:
            raise UserError(f"--analog: unknown analog tile preset {analog!r} (known: {', '.join(PRESETS)})")
    cfg = TrainConfig(
        model=model_name,
        model_kwargs=model_kwargs,
        data=data,
        data_root=data_root,
        method=method,
        method_options=method_options,
        noise=spec_from_kwargs(noise_kw, _resumed_mapping(resume), resume or "the model file"),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        scheduler=scheduler,
        seed=seed,
        device=device,
        amp=amp,
        val_noise_draws=val_draws,
        val_fraction=val_fraction,
        analog=analog,
        checkpoint=output,
        progress=progress,
    )
    log = (lambda s: None) if as_json else click.echo
    choice = mapping_of_spec(cfg.noise)
    if choice is not None:
        log(f"noise: profile {noise_kw_profile}, {choice.describe(_bits_per_device(cfg.noise))}")
    result = run_training(cfg, resume=resume, log=log)
    import torch.distributed as dist

    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    if rank0:
        save_checkpoint(result.checkpoint, output)
        if as_json:
            mapping = choice.spec() if choice is not None else None
            payload = {"output": output, "mapping": mapping, "history": result.history, "test": result.test}
            click.echo(json_text(payload, indent=2))
        else:
            click.echo(f"wrote {output}")
            click.echo(aligned(train_rows(result.history, result.test, val_draws)))
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _check_output(output: str, resume: str | None, force: bool) -> None:
    """Refuse to replace an existing model file unless --force (or it is the run being resumed)."""
    out = Path(output)
    if out.is_dir():
        raise UserError(f"{output} is a folder: give a model file name with -o")
    if not out.exists() or force:
        return
    if resume is not None and Path(resume).resolve() == out.resolve():
        return  # continuing a run writes on into its own file
    raise UserError(f"{output} already exists (use --force to replace it, or --resume {output} to continue it)")


def _resumed_mapping(resume: str | None) -> MappingChoice | None:
    """The mapping of the run being resumed: it continues as it started (contradicting options are refused)."""
    if resume is None:
        return None
    from models.checkpoint import load_checkpoint, model_mapping

    return model_mapping(load_checkpoint(resume))


def _bits_per_device(spec: dict[str, Any] | None) -> int | None:
    """Bits per device of the profile a spec names (for messages), None if it cannot be read."""
    from calibration.profile import ProfileError, load_profile

    try:
        return int(load_profile(spec["path"]).bits_per_device) if spec else None
    except (ProfileError, KeyError):
        return None


def aligned(rows: list[tuple[str, ...]]) -> str:
    """`name  value unit  note` lines (hil.cli.report's columns); a row is (name, value, unit[, note])."""
    from hil.cli.report import aligned as report_aligned

    cells = [tuple(r) + ("",) * (4 - len(r)) for r in rows]
    uw = max((len(c[2]) for c in cells), default=0)
    return "\n".join(
        report_aligned([(0, n, v, f"{u:<{uw}}  {note}".rstrip() if note else u) for n, v, u, note in cells])
    )


def pct(x: float) -> str:
    """An accuracy in [0, 1] as percent with two decimals."""
    return f"{100 * x:.2f}"


def train_rows(
    history: list[dict[str, Any]], test: dict[str, float] | None = None, draws: int | None = None
) -> list[tuple[str, ...]]:
    """The end-of-training summary: accuracies in % on the test set (read once, after training), time in s.

    Without a test result (a run stopped before its planned epochs) the last epoch's validation accuracies
    are shown, labelled as such.
    """
    if not history:
        return [("epochs", "0", "", "(nothing left to train)")]
    last = history[-1]
    rows: list[tuple[str, ...]] = [("epochs", str(last["epoch"]), "")]
    key, where = ("test", "test set") if test is not None else ("val", "validation split, last epoch")
    source = test if test is not None else last
    over = f"{draws} draws" if draws is not None else "the draws"
    if f"{key}_acc" in source:
        rows.append(("clean accuracy", pct(source[f"{key}_acc"]), "%", where))
    if f"{key}_noisy_acc" in source:
        std = source.get(f"{key}_noisy_std", float("nan"))
        rows.append(("noisy accuracy", pct(source[f"{key}_noisy_acc"]), "%", f"{where}, std {pct(std)} % over {over}"))
    rows.append(("training time", f"{sum(h.get('time_s', 0.0) for h in history):.1f}", "s"))
    return rows
