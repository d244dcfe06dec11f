"""Benchmark: Monte Carlo time per noise draw vs one plain digital forward of the same batch.

Models: the small CNN (3->16->32 convs, 2048->128->10) and the MLP 3072-256-128-10; 1,000 random
3x32x32 images; noise from a profile (IBM B.2 ReRAM sigma(g), 1 day relaxation, bit-sliced mapping)
or NeFT Gaussian device noise; 100 draws. Target: batched MC time per draw <= 1.3x a digital forward.

Run: python benchmarks/mc_models.py [--draws 100] [--images 1000] [--device auto] [--loop] [--models cnn,mlp]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.architectures import MLP, SmallCNN
from models.montecarlo import evaluate_mc, evaluate_mc_reference
from models.noise.factory import noise_from_profile, noise_from_spec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Mean seconds of one no-grad forward of the whole batch, over ``repeats`` back-to-back forwards."""
    with torch.no_grad():
        _sync(x.device)
        t = time.perf_counter()
        for _ in range(repeats):
            model(x)
        _sync(x.device)
    return (time.perf_counter() - t) / repeats


def time_mc(model, x, y, noise, draws: int, device, chunk: int | None) -> float:
    """Seconds per draw of the batched evaluator (noise sampling included, clean pass excluded)."""
    _sync(device)
    t = time.perf_counter()
    evaluate_mc(model, x, y, noise, draws, device=device, clean=False, batch_size=len(x), draws_per_chunk=chunk)
    _sync(device)
    return (time.perf_counter() - t) / draws


def compare(model, x, y, noise, draws: int, device, repeats: int, chunk: int | None) -> tuple[float, float, float]:
    """Median forward, MC per draw and ratio over ``repeats`` rounds of (MC run, block of forwards).

    Each round times as many forwards as it has draws, so the two blocks last about as long and see the
    same load on a shared machine; the ratio is taken within each round.
    """
    with torch.no_grad():
        model(x)
    evaluate_mc(model, x, y, noise, min(draws, 8), device=device, clean=False, batch_size=len(x), draws_per_chunk=chunk)
    fwd, per, ratio = [], [], []
    for _ in range(repeats):
        m = time_mc(model, x, y, noise, draws, device, chunk)
        f = time_forward(model, x, draws)
        fwd.append(f)
        per.append(m)
        ratio.append(m / f)
    return statistics.median(fwd), statistics.median(per), statistics.median(ratio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=None, help="draws per batched forward (default: by memory)")
    ap.add_argument("--loop", action="store_true", help="also time the one-draw-per-loop reference")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", default="cnn,mlp", help="comma-separated subset of cnn,mlp")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.images,), device=device)
    from calibration.profile import NoiseProfile

    noises = {
        "profile(ibm_reram,1d)": noise_from_profile(NoiseProfile.from_paper("ibm_reram", time="1s"), t_s=86400.0),
        "gaussian(sigma_d=0.3)": noise_from_spec({"family": "gaussian", "sigma": 0.3}),
    }
    builders = {"cnn": lambda: SmallCNN(3, 10, 32), "mlp": lambda: MLP(3072, 10, (256, 128))}
    models = {m: builders[m]() for m in args.models.split(",")}
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"threads={torch.get_num_threads()}), images={args.images}, draws={args.draws}, torch {torch.__version__}"
    )
    head = f"{'model':5} {'noise':24} {'forward ms':>11} {'MC ms/draw':>11} {'ratio':>6}"
    if args.loop:
        head += f" {'loop ms/draw':>13} {'speed-up':>9}"
    print(head)
    for mname, model in models.items():
        model = model.to(device).eval()
        for nname, noise in noises.items():
            fwd, per, ratio = compare(model, x, y, noise, args.draws, device, args.repeats, args.chunk)
            line = f"{mname:5} {nname:24} {fwd * 1e3:11.3f} {per * 1e3:11.3f} {ratio:6.2f}"
            if args.loop:
                n = min(args.draws, 20)
                _sync(device)
                t = time.perf_counter()
                evaluate_mc_reference(model, x, y, noise, n)
                _sync(device)
                loop = (time.perf_counter() - t) / n
                line += f" {loop * 1e3:13.3f} {loop / per:9.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
