"""Command line of the reproduction harness: which protocols, which section, where the data and results live."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from benchmarks.reproduce.config import Protocol, available, check_protocol, load_protocol

# where --full expects each on-disk dataset under --data-dir (models.data.load_dataset's layouts)
LAYOUTS = {
    "mnist": "DIR/MNIST/raw/ (or DIR/) holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz)",
    "fashion_mnist": "DIR/FashionMNIST/raw/ (or DIR/) holding the four Fashion-MNIST idx files (optionally .gz)",
    "cifar10": "DIR/cifar-10-batches-py/ holding data_batch_1..data_batch_5 and test_batch (the python pickles)",
    "cifar100": "DIR/cifar-100-python/ holding train and test (the python pickles)",
}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _protocols(spec: str) -> list[Protocol]:
    names = available() if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("--config needs protocol names (comma-separated) or all")
    out = []
    for n in names:
        p = load_protocol(n)
        check_protocol(p)
        out.append(p)
    return out


def _check_data(p: Protocol, kind: str, data_dir: str | None) -> None:
    """Fail early, in one line, when a section's dataset cannot be read (naming the folder layout expected)."""
    from models.data import load_dataset

    data = p.section(kind).data.lower().replace("-", "_")
    if data not in ("digits", "mnist1d") and data_dir is None:
        layout = LAYOUTS.get(data, "the dataset's files")
        raise ValueError(f"{p.name} --{kind} reads {data} from a local folder: give --data-dir DIR with {layout}")
    try:
        load_dataset(data, data_dir)
    except (ValueError, OSError) as exc:
        hint = f" (expected {LAYOUTS[data]})" if data in LAYOUTS and "expected" not in str(exc) else ""
        raise ValueError(f"{p.name} --{kind}: {exc}{hint}") from None


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): the problem and where to look next."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen protocols and print the claims table (markdown, or JSON with --json)."""
    ap = _Parser(
        prog="python -m benchmarks.reproduce",
        description="Reproduce the papers' claims: each protocol trained and judged with paired CIs over seeds.",
    )
    ap.add_argument(
        "--config", default="all", help=f"protocol names, comma-separated, or all ({', '.join(available())})"
    )
    group = ap.add_mutually_exclusive_group()
    group.add_argument(
        "--standin", dest="section", action="store_const", const="standin", help="CPU stand-in (default)"
    )
    group.add_argument("--full", dest="section", action="store_const", const="full", help="the paper's setting")
    ap.set_defaults(section="standin")
    ap.add_argument("--data-dir", default=None, help="folder of the on-disk datasets (MNIST, CIFAR) for --full")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the section's; >= 2 for a verdict)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel, each in its own process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", default="reproduce-out", help="folder of cached runs, evaluations and the reports")
    ap.add_argument("--json", action="store_true", help="print the JSON report instead of markdown")
    ap.add_argument("--list", action="store_true", help="list the protocols and their claims, run nothing")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        ap.error("--seeds must be >= 1 (>= 2 for a verdict)")
    try:
        protocols = _protocols(args.config)
    except ValueError as exc:
        ap.error(str(exc))
    if args.list:
        for p in protocols:
            print(f"{p.name}: {p.paper} ({p.source})")
            for c in p.claims:
                print(f"  {c.id}: {c.text} [{c.a} {c.direction} {c.b}, {c.metric} @ {', '.join(c.condition)}]")
        return 0
    try:
        for p in protocols:
            _check_data(p, args.section, args.data_dir)
    except ValueError as exc:
        ap.error(str(exc))
    device = args.device or _default_device()
    if device.startswith("cuda") and not _default_device().startswith("cuda"):
        ap.error(f"--device {device}: CUDA is not available here; use --device cpu")

    from benchmarks.reproduce.report import full_markdown, to_json
    from benchmarks.reproduce.runner import RunOptions, run_protocol

    out = Path(args.out)
    log = (lambda _s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    opts = RunOptions(
        out=out,
        section=args.section,
        data_dir=args.data_dir,
        device=device,
        seeds=args.seeds,
        jobs=args.jobs,
        threads=args.threads,
        log=log,
    )
    results = [run_protocol(p, opts) for p in protocols]
    md = full_markdown(results)
    js = to_json(results)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"claims-{args.section}"
    (out / f"{stem}.md").write_text(md + "\n")
    (out / f"{stem}.json").write_text(json.dumps(js, indent=1))
    print(json.dumps(js, indent=1) if args.json else md)
    return 0
