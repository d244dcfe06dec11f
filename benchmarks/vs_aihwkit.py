"""Benchmark: Monte Carlo per chip draw, ours (`models.montecarlo.evaluate_mc`) against IBM aihwkit 1.2 inference.

The same model, inputs and thread count on both sides: the small CNN (268k weights) and the MLP 3072-256-128-10
(821k), 1,000 random 3x32x32 images, as `benchmarks/mc_models.py`. One aihwkit draw is what a user runs per
simulated chip: ``program_analog_weights()`` (a fresh programming-noise draw), ``drift_analog_weights(t)`` where
the noise model has a time (the conductance at t), then a forward of the batch and its accuracy. aihwkit runs
with perfect IO (``forward.is_perfect``: no DAC/ADC quantisation, no output noise), no drift compensation (its
global compensation adds a read-out forward per drift; ours compensates nothing either), its default tiling
(512 x 512) and ``mapping.weight_scaling_omega = 1``. Noise paths:

- ``gaussian``: ours NeFT device Gaussian sigma_d 0.3 (one normal per weight); aihwkit `PCMLikeNoiseModel` with
  a constant programming sigma of 0.3 g_max on a 0..g_max pair (its cheapest programming noise), no drift call;
- ``profile``: the IBM B.2 ReRAM profile 1 day after programming, ours on its fast path; aihwkit
  `ReRamWan2022NoiseModel` from `calibration.aihwkit_export.export_aihwkit` of the same profile, t = 1 day;
- ``fitted``: ours with the stuck-at faults and the rank-10 spatial field of `mc_models`' fitted path (the
  per-device path); aihwkit the same export, which cannot carry those terms (its "dropped" list): aihwkit does
  less per draw there.

Our side's time includes its per-evaluation set-up (the fitted path builds its device layout once per
`evaluate_mc`, about 0.15 s of CPU for the MLP here), spread over ``--draws``: with a handful of draws that set-up
dominates (2 draws: the MLP's fitted path is slower than aihwkit's), from about 20 on it is a few percent, and
`rram evaluate` takes 1,000. Timing is paired and interleaved: each round times both sides on the same number of draws, the order
alternating, and the speed-up (aihwkit time / ours) is taken within the round; the table gives its median and
minimum. aihwkit is optional and not a dependency of rram-hil: install it into the same environment (a source
build, `pip install aihwkit`; this machine's wheel-less Python builds it in about 6 minutes) to run this. On a GPU
(``--device cuda``) both sides run on cuda when aihwkit was built with CUDA.

Run: python benchmarks/vs_aihwkit.py [--draws 20] [--rounds 5] [--threads N] [--models cnn,mlp]
     [--noises gaussian,profile,fitted] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from calibration.aihwkit_export import export_aihwkit
from calibration.profile import NoiseProfile
from models.montecarlo import evaluate_mc

if str(Path(__file__).resolve().parent) not in sys.path:  # run as `python benchmarks/vs_aihwkit.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from mc_models import MODELS, bench_inputs, build_noises  # the same models, inputs and noises as mc_models

T_DAY_S = 86400.0
GAUSSIAN_SIGMA = 0.3  # mc_models' Gaussian path: sigma_d as a fraction of a device's range


@dataclass
class AihwkitSetup:
    """How one noise path is run in aihwkit: its rpu config and the drift time (None: no drift call)."""

    rpu_config: Any
    t_inference: float | None
    dropped: list[str]


def aihwkit_setup(noise: str) -> AihwkitSetup:
    """The aihwkit counterpart of one of our noise paths (module docstring)."""
    from aihwkit.inference import PCMLikeNoiseModel, ReRamWan2022NoiseModel, SinglePairConductanceConverter
    from aihwkit.simulator.configs import InferenceRPUConfig

    rpu = InferenceRPUConfig()
    rpu.forward.is_perfect = True
    rpu.mapping.weight_scaling_omega = 1.0
    rpu.drift_compensation = None
    if noise == "gaussian":
        g_max = 40.0  # uS; the noise is relative to the range, so the window only sets the units
        rpu.noise_model = PCMLikeNoiseModel(
            prog_coeff=[GAUSSIAN_SIGMA * g_max],
            g_converter=SinglePairConductanceConverter(g_max=g_max, g_min=0.0),
            read_noise_scale=0.0,
            drift_scale=0.0,
        )
        return AihwkitSetup(rpu, None, [])
    exp = export_aihwkit(NoiseProfile.from_paper("ibm_reram", time="1s"))
    w = exp["ReRamWan2022NoiseModel"]
    rpu.noise_model = ReRamWan2022NoiseModel(
        coeff_dic={float(t): v for t, v in w["coeff_dic"].items()},
        g_converter=SinglePairConductanceConverter(**exp["SinglePairConductanceConverter"]),
        noise_scale=w["noise_scale"],
    )
    dropped = list(exp["dropped"])
    if noise == "fitted":
        dropped += ["stuck-at faults (0.5 % on, 0.5 % off)", "the rank-10 spatial field"]
    return AihwkitSetup(rpu, T_DAY_S, dropped)


def aihwkit_draws(
    analog: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, t_inference: float | None
) -> float:
    """Seconds per chip draw of aihwkit: program, drift (if timed), forward and the draw's accuracy."""
    correct = []
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(draws):
            analog.program_analog_weights()
            if t_inference is not None:
                analog.drift_analog_weights(t_inference)
            correct.append(int((analog(x).argmax(-1) == y).sum()))
        _sync(x.device)
    return (time.perf_counter() - t) / draws


def ours_draws(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, noise, draws: int) -> float:
    """Seconds per draw of our batched Monte Carlo (noise sampling included, clean pass excluded)."""
    _sync(x.device)
    t = time.perf_counter()
    evaluate_mc(model, x, y, noise, draws, clean=False, batch_size=len(x))
    _sync(x.device)
    return (time.perf_counter() - t) / draws


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired(
    ours: Callable[[], float], theirs: Callable[[], float], rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """Per round both timings, the order alternating; (ours s/draw, aihwkit s/draw, aihwkit / ours)."""
    ours(), theirs()  # warm-up: first-call costs (allocators, thread pools, tile set-up) kept out
    a: list[float] = []
    b: list[float] = []
    for k in range(rounds):
        if k % 2 == 0:
            a.append(ours())
            b.append(theirs())
        else:
            b.append(theirs())
            a.append(ours())
    return a, b, [tb / ta for ta, tb in zip(a, b, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch and OpenMP threads on both sides")
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--noises", default="gaussian,profile,fitted")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # aihwkit's C++ tiles; read when it is imported
        torch.set_num_threads(args.threads)
    try:
        import aihwkit
        from aihwkit.nn.conversion import convert_to_analog
    except ImportError:
        raise SystemExit(
            "aihwkit is not installed here: `pip install aihwkit` (a source build), then run again"
        ) from None
    device = torch.device(args.device)
    if device.type == "cuda":
        from aihwkit.simulator.rpu_base import cuda

        if not torch.cuda.is_available() or not cuda.is_compiled():
            raise SystemExit("--device cuda needs a GPU and an aihwkit built with CUDA")
    x, y = bench_inputs(args.images, device)
    names = args.noises.split(",")
    ours_noise = build_noises(names, None)
    print(
        f"device={device}, threads={torch.get_num_threads()}, images={args.images}, draws={args.draws}, "
        f"rounds={args.rounds}, torch {torch.__version__}, aihwkit {aihwkit.__version__}"
    )
    print(
        f"{'model':5} {'noise':9} {'ours ms/draw':>12} {'aihwkit ms/draw':>15} {'speed-up med':>12} {'min':>5}"
        f" {'max':>5}"
    )
    notes: dict[str, list[str]] = {}
    for mname in args.models.split(","):
        model = MODELS[mname]().to(device).eval()
        for nname in names:
            setup = aihwkit_setup(nname)
            notes[nname] = setup.dropped
            analog = convert_to_analog(model, setup.rpu_config).to(device).eval()
            a, b, ratio = paired(
                partial(ours_draws, model, x, y, ours_noise[nname], args.draws),
                partial(aihwkit_draws, analog, x, y, args.draws, setup.t_inference),
                args.rounds,
            )
            print(
                f"{mname:5} {nname:9} {statistics.median(a) * 1e3:12.2f} {statistics.median(b) * 1e3:15.2f} "
                f"{statistics.median(ratio):12.2f} {min(ratio):5.2f} {max(ratio):5.2f}",
                flush=True,
            )
    for nname, dropped in notes.items():
        for line in dropped:
            print(f"aihwkit leaves out ({nname}): {line}")


if __name__ == "__main__":
    main()
