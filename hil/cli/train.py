"""`rram train`: train a network with a training method under a noise model; writes a self-describing model file."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from hil.cli.commands import COMMANDS
from hil.cli.errors import UserError


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
            type=click.Choice(["bitsliced", "analog"]),
            default="bitsliced",
            show_default=True,
            help="Weight-to-device mapping for a profile.",
        ),
        click.option("--sigma", type=float, help="NeFT device sigma_d (level units; 8-bit weights on 2-bit devices)."),
        click.option(
            "--device-model",
            type=click.Choice(["RRAM1", "RRAM2", "FeFET1", "FeFET2"]),
            help="State-dependent sigma per level (NeFT IV-F), with --sigma.",
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


def spec_from_kwargs(kw: dict[str, Any]) -> dict[str, Any] | None:
    """Pop the noise options from a command's kwargs and build the spec."""
    from models.noise.factory import spec_from_options

    keys = (
        "profile",
        "t_s",
        "mapping",
        "sigma",
        "device_model",
        "lognormal",
        "additive",
        "censor",
        "recentre",
        "noise_json",
    )
    return spec_from_options(**{k: kw.pop(k) for k in keys})


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


@COMMANDS.register("train")
@click.command("train")
@click.option(
    "--model", "model_name", default="cnn", show_default=True, help="cnn | mlp | vgg8 | resnet18 | pkg.mod:factory"
)
@click.option("--model-arg", multiple=True, metavar="KEY=VALUE", help="Keyword argument of the model (repeatable).")
@click.option("--data", default="digits", show_default=True, help="digits | mnist | fashion_mnist | cifar10 | cifar100")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder of an on-disk dataset.")
@click.option("--method", default="vanilla", show_default=True, help="Training method (see --list-methods).")
@click.option("--opt", "method_opt", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable).")
@noise_options
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--scheduler", type=click.Choice(["cosine", "none"]), default="cosine", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision on CUDA.")
@click.option("--val-draws", type=int, default=5, show_default=True, help="Noise draws for per-epoch noisy accuracy.")
@click.option("--resume", type=click.Path(dir_okay=False, exists=True), help="Continue from this model file.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Model file to write (every epoch).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
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
    resume: str | None,
    output: str | None,
    progress: bool,
    list_methods: bool,
    as_json: bool,
    **noise_kw: Any,
) -> None:
    """Train a network robust to device noise (run under torchrun for data-parallel training)."""
    if list_methods:
        from models.methods.registry import describe_methods

        methods = describe_methods()
        click.echo(json.dumps(methods, indent=2) if as_json else method_listing(methods))
        return
    if output is None:
        raise UserError("give the model file to write with -o/--output")
    from models.checkpoint import save_checkpoint
    from models.config import TrainConfig
    from models.training import train as run_training

    method_options = _parse_opts(method_opt, "--opt")
    _check_method(method, method_options)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UserError("--epochs and --batch-size must be >= 1 and --lr > 0")
    cfg = TrainConfig(
        model=model_name,
        model_kwargs=_parse_opts(model_arg, "--model-arg"),
        data=data,
        data_root=data_root,
        method=method,
        method_options=method_options,
        noise=spec_from_kwargs(noise_kw),
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
        checkpoint=output,
        progress=progress,
    )
    result = run_training(cfg, resume=resume, log=(lambda s: None) if as_json else click.echo)
    import torch.distributed as dist

    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    if rank0:
        save_checkpoint(result.checkpoint, output)
        if as_json:
            click.echo(json.dumps({"output": output, "history": result.history}, indent=2))
        else:
            click.echo(f"wrote {output}")
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
