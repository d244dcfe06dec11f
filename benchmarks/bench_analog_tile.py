"""Benchmark: the analog tile forward (models.analog) against a digital forward, plain and in Monte Carlo.

Models: the small CNN (1->16->32 convs, 512->128->10) and the MLP 64-256-128-10 on digits-sized 1x8x8
inputs (random, so only time is measured); weight noise: NeFT Gaussian sigma_d = 0.3. Tiles: the supplement's
Table 1 (``ibm_table1``, IR drop included), the same without IR drop, and IO non-idealities only (DAC/ADC,
output noise and bound, no short-term weight noise, no IR drop, no drift compensation), the set aihwkit's
default inference IO models. Every round times, back to back: a block of digital forwards, a block of analog
forwards, a digital Monte Carlo run and an analog one (``draws`` draws each); ratios are taken within a round
and the median over rounds is reported, so a shared machine's load changes cancel; with one thread the clock is
the process's CPU time.

    python benchmarks/bench_analog_tile.py                       # 1 thread, 100 draws, 1000 images, 5 rounds
    python benchmarks/bench_analog_tile.py --draws 50 --rounds 3 --models mlp --tiles ibm_table1

aihwkit (``pip install aihwkit``) is timed too when it imports (its InferenceRPUConfig default IO on the same
networks); version 1.2.0 ships only a source archive that builds its C++ simulator, so it is usually absent.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.analog import analog_config, analog_tiles
from models.architectures import MLP, SmallCNN
from models.montecarlo import evaluate_mc
from models.noise.factory import noise_from_spec

TILES: dict[str, dict[str, Any]] = {
    "ibm_table1": {},
    "ibm_table1_no_ir": {"ir_drop": 0.0},
    "io_only": {"ir_drop": 0.0, "w_noise": 0.0, "drift_compensation": "none"},
}


def _clock() -> float:
    """CPU seconds of this process with one thread (immune to other processes' load), else wall seconds."""
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def _seconds(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` back-to-back calls."""
    t = _clock()
    for _ in range(repeats):
        fn()
    return (_clock() - t) / repeats


def bench_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tiles: str, draws: int, rounds: int) -> dict:
    """Median per-round ratios: analog forward / digital forward, digital and analog MC per draw / digital forward."""
    noise = noise_from_spec({"family": "gaussian", "sigma": 0.3})
    cfg = analog_config("ibm_table1", **TILES[tiles])
    reps = max(3, draws // 4)
    fwd, afwd, dmc, amc = [], [], [], []
    with torch.no_grad():
        model(x)
    with analog_tiles(model, cfg, calibration=x[:200]) as t:
        with torch.no_grad():
            model(x)
        evaluate_mc(model, x, y, t.draws(noise), 4, clean=False, batch_size=len(x))
    for _ in range(rounds):
        with torch.no_grad():
            f = _seconds(lambda: model(x), reps)
            with analog_tiles(model, cfg, calibration=x[:200]):
                fa = _seconds(lambda: model(x), reps)
        d = _seconds(lambda: evaluate_mc(model, x, y, noise, draws, clean=False, batch_size=len(x)), 1) / draws
        with analog_tiles(model, cfg, calibration=x[:200]) as t:
            a = _seconds(lambda: evaluate_mc(model, x, y, t.draws(noise), draws, clean=False, batch_size=len(x)), 1)
        fwd.append(f)
        afwd.append(fa / f)
        dmc.append(d / f)
        amc.append(a / draws / f)
    return {
        "forward_ms": 1e3 * statistics.median(fwd),
        "analog_forward_x": statistics.median(afwd),
        "digital_mc_x": statistics.median(dmc),
        "analog_mc_x": statistics.median(amc),
    }


def bench_aihwkit(model: nn.Module, x: torch.Tensor, rounds: int, reps: int) -> float | None:
    """aihwkit's analog forward (InferenceRPUConfig, default IO) over a digital forward, or None without aihwkit."""
    try:
        from aihwkit.nn.conversion import convert_to_analog
        from aihwkit.simulator.configs import InferenceRPUConfig
    except ImportError:
        return None
    analog = convert_to_analog(model, InferenceRPUConfig()).eval()
    ratios = []
    with torch.no_grad():
        analog(x)
        for _ in range(rounds):
            f = _seconds(lambda: model(x), reps)
            ratios.append(_seconds(lambda: analog(x), reps) / f)
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=100, help="Monte Carlo draws per timed run")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="cnn,mlp", help="comma-separated subset of cnn,mlp")
    ap.add_argument("--tiles", default=",".join(TILES), help=f"comma-separated subset of {','.join(TILES)}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.images, 1, 8, 8)
    y = torch.randint(0, 10, (args.images,))
    builders = {"cnn": lambda: SmallCNN(1, 10, 8), "mlp": lambda: MLP(64, 10, (256, 128))}
    print(f"threads={torch.get_num_threads()}, images={args.images}, draws={args.draws}, torch {torch.__version__}")
    print(f"{'model':5} {'tiles':17} {'forward ms':>10} {'analog fwd':>11} {'digital MC':>11} {'analog MC':>10}")
    for name in args.models.split(","):
        model = builders[name]().eval()
        for tiles in args.tiles.split(","):
            r = bench_model(model, x, y, tiles, args.draws, args.rounds)
            print(
                f"{name:5} {tiles:17} {r['forward_ms']:10.3f} {r['analog_forward_x']:10.2f}x "
                f"{r['digital_mc_x']:10.2f}x {r['analog_mc_x']:9.2f}x",
                flush=True,
            )
        ai = bench_aihwkit(model, x, args.rounds, max(3, args.draws // 4))
        print(f"{name:5} {'aihwkit default':17} " + ("(aihwkit not installed)" if ai is None else f"{ai:21.2f}x"))
    print("ratios: per draw (MC) or per forward, over one digital no-grad forward of the same batch; median of rounds")


if __name__ == "__main__":
    main()
