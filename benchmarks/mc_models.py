"""Benchmark: Monte Carlo time per noise draw vs one plain digital forward of the same batch, on every noise path.

Models: the small CNN (3->16->32 convs, 2048->128->10, 268k weights) and the MLP 3072-256-128-10 (821k);
1,000 random 3x32x32 images. Noise paths:

- ``gaussian``: NeFT device Gaussian sigma_d 0.3 (one normal per weight: the fast path);
- ``lognormal``: MTRD's W * exp(N(0, sigma^2)), sigma 0.2 (one normal per weight);
- ``profile``: the IBM B.2 ReRAM profile 1 day after programming, bit-sliced (the profile's fast path);
- ``fitted``: a profile shaped like one fitted from the simulated chip: the IBM law plus stuck-at faults
  (0.5 % on, 0.5 % off) and a rank-10 spatial covariance over 32x32-cell tiles (the per-device path); or the
  profile file given with ``--profile`` (e.g. one ``rram demo`` fitted);
- ``lognormal-profile``: a per-device log-normal profile (s 0.1) with the same faults and field.

Timing is paired and interleaved: each round runs one Monte Carlo evaluation and then, right after, as many
plain forwards as it had draws, and the ratio is taken within the round (both halves see the same load on a
shared machine); the table gives the median and the minimum of the rounds' ratios. On CPU, Monte Carlo runs
each batch in cache-sized passes (`models.montecarlo.forward_part`), which alone makes a convolutional forward
faster, so a second ratio is taken against plain forwards in the passes Monte Carlo gives a clean forward
(``parts`` inputs each; the same figure as the first when that is the whole batch). ``--reference`` adds, in the
same rounds, the per-device reference sampler (`ProfileNoise._delta`, what Monte Carlo used before the
prebuilt per-device sampler) on the per-device paths, with the new/old speed-up per round. On a GPU the same
runs on cuda (``--device auto`` picks it).

Run: python benchmarks/mc_models.py [--draws 100] [--images 1000] [--rounds 5] [--threads N] [--reference]
     [--models cnn,mlp] [--noises gaussian,lognormal,profile,fitted,lognormal-profile] [--profile p.h5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.architectures import MLP, SmallCNN
from models.montecarlo import activation_numel, evaluate_mc, forward_part
from models.noise.apply import clean_weights
from models.noise.base import WeightNoise
from models.noise.factory import noise_from_profile, noise_from_spec
from models.noise.profile_noise import ProfileNoise

TILE = 32  # cells per side of the synthetic fitted profile's spatial tile
RANK = 10  # kept eigenpairs of its spatial covariance


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ReferenceSampling(WeightNoise):
    """A profile noise whose Monte Carlo draws come from the reference per-device code (`ProfileNoise._delta`)."""

    def __init__(self, noise: ProfileNoise) -> None:
        self.noise = noise

    def sample_batch(self, weights, n_draws, generator=None):
        return self.noise.sample_batch(weights, n_draws, generator)

    def noise_std(self, weights):
        return self.noise.noise_std(weights)

    def scaled(self, factor):
        return ReferenceSampling(self.noise.scaled(factor))

    def draw_sampler(self, weights):
        nz = self.noise

        def draws(generators):
            return {n: nz._delta(n, w, generators, None).add_(w + nz.quantization_shift(w)) for n, w in weights.items()}

        return draws


def spatial_model(g_max: float, share: float = 0.3):
    """Rank-10 exponential-kernel covariance over a 32x32 tile, holding ``share`` of a 2 %-of-g_max variance."""
    from calibration.noise_terms import SpatialModel

    rr, cc = np.meshgrid(np.arange(TILE), np.arange(TILE), indexing="ij")
    xy = np.stack([rr.ravel(), cc.ravel()], 1).astype(float)
    dist = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    s2 = (0.02 * g_max) ** 2 * share
    vals, vecs = np.linalg.eigh(s2 * np.exp(-dist / 6.0))
    keep = np.argsort(vals)[::-1][:RANK]
    return SpatialModel(
        shape=(TILE, TILE),
        eigvals=vals[keep],
        eigvecs=vecs[:, keep],
        n_repeats=1,
        total_variance=float(vals[keep].sum()),
    )


# The benchmark's models by name: the small CNN (268k weights) and the MLP 3072-256-128-10 (821k).
MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "cnn": lambda: SmallCNN(3, 10, 32),
    "mlp": lambda: MLP(3072, 10, (256, 128)),
}


def bench_inputs(images: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed random batch both Monte Carlo benchmarks time: 3x32x32 images and labels (seed 0)."""
    torch.manual_seed(0)
    return torch.randn(images, 3, 32, 32, device=device), torch.randint(0, 10, (images,), device=device)


def build_noises(names: list[str], profile_path: str | None) -> dict[str, WeightNoise]:
    """The benchmark's noise objects by path name."""
    from calibration.profile import NoiseProfile

    def spec(family: str, sigma: float) -> WeightNoise:
        noise = noise_from_spec({"family": family, "sigma": sigma})
        assert noise is not None
        return noise

    out: dict[str, WeightNoise] = {}
    for name in names:
        if name == "gaussian":
            out[name] = spec("gaussian", 0.3)
        elif name == "lognormal":
            out[name] = spec("lognormal", 0.2)
        elif name == "profile":
            out[name] = noise_from_profile(NoiseProfile.from_paper("ibm_reram", time="1s"), t_s=86400.0)
        elif name == "fitted":
            if profile_path:
                out[name] = noise_from_profile(profile_path)
            else:
                prof = NoiseProfile.from_paper("ibm_reram", time="1s", stuck_lrs=0.005, stuck_hrs=0.005)
                prof.spatial = spatial_model(prof.g_max)
                out[name] = noise_from_profile(prof, t_s=86400.0)
        elif name == "lognormal-profile":
            prof = NoiseProfile.from_paper("lognormal", s=0.1, stuck_lrs=0.005, stuck_hrs=0.005)
            prof.spatial = spatial_model(prof.g_max)
            out[name] = noise_from_profile(prof)
        else:
            raise SystemExit(f"unknown noise path {name!r}")
    return out


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int, part: int | None = None) -> float:
    """Mean seconds of one no-grad forward of the whole batch (in passes of ``part`` inputs if given), over
    ``repeats`` back-to-back forwards."""
    step = part or len(x)
    with torch.no_grad():
        _sync(x.device)
        t = time.perf_counter()
        for _ in range(repeats):
            for b in range(0, len(x), step):
                model(x[b : b + step])
        _sync(x.device)
    return (time.perf_counter() - t) / repeats


def clean_part(model: torch.nn.Module, x: torch.Tensor) -> int:
    """The inputs per pass Monte Carlo gives a plain forward of this model (`forward_part` of one draw)."""
    weights = list(clean_weights(model).values())  # the Conv/Linear weights, as evaluate_mc counts them
    sample = activation_numel(model, x[:1]) * weights[0].element_size()
    return forward_part(sample, sum(w.numel() * w.element_size() for w in weights), 1, len(x), x.device)


def time_mc(model, x, y, noise, draws: int, device, chunk: int | None) -> float:
    """Seconds per draw of the batched evaluator (noise sampling included, clean pass excluded)."""
    _sync(device)
    t = time.perf_counter()
    evaluate_mc(model, x, y, noise, draws, device=device, clean=False, batch_size=len(x), draws_per_chunk=chunk)
    _sync(device)
    return (time.perf_counter() - t) / draws


def paired_rounds(
    model, x, y, noise, ref: WeightNoise | None, draws: int, device, rounds: int, chunk: int | None
) -> dict[str, Any]:
    """Per round: MC (new), plain forwards, and optionally MC with the reference sampler; ratios within rounds."""
    with torch.no_grad():
        model(x)
    warm: list[WeightNoise] = [noise] if ref is None else [noise, ref]
    for nz in warm:  # warm-up: first-call costs (allocator, thread pool, fold check) kept out of the rounds
        evaluate_mc(
            model, x, y, nz, min(draws, 8), device=device, clean=False, batch_size=len(x), draws_per_chunk=chunk
        )
    part = clean_part(model, x)
    fwd, fwd_parts, mc, ratio, ratio_parts, old, speedup = [], [], [], [], [], [], []
    for _ in range(rounds):
        m = time_mc(model, x, y, noise, draws, device, chunk)
        f = time_forward(model, x, draws)
        fp = time_forward(model, x, draws, part) if part < len(x) else f
        fwd.append(f)
        fwd_parts.append(fp)
        mc.append(m)
        ratio.append(m / f)
        ratio_parts.append(m / fp)
        if ref is not None:
            o = time_mc(model, x, y, ref, draws, device, chunk)
            old.append(o)
            speedup.append(o / m)
    res = {
        "forward_ms": statistics.median(fwd) * 1e3,
        "forward_parts_ms": statistics.median(fwd_parts) * 1e3,
        "part": part,
        "mc_ms": statistics.median(mc) * 1e3,
        "ratio_median": statistics.median(ratio),
        "ratio_min": min(ratio),
        "ratio_parts_median": statistics.median(ratio_parts),
        "ratio_parts_min": min(ratio_parts),
    }
    if ref is not None:
        res["ref_ms"] = statistics.median(old) * 1e3
        res["speedup_median"] = statistics.median(speedup)
        res["speedup_min"] = min(speedup)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=None, help="draws per batched forward (default: by memory)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", default="cnn,mlp", help="comma-separated subset of cnn,mlp")
    ap.add_argument("--noises", default="gaussian,lognormal,profile,fitted,lognormal-profile")
    ap.add_argument("--profile", default=None, help="a fitted noise-profile .h5 for the 'fitted' path")
    ap.add_argument("--reference", action="store_true", help="also time the reference per-device sampler, paired")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    x, y = bench_inputs(args.images, device)
    noises = build_noises(args.noises.split(","), args.profile)
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"threads={torch.get_num_threads()}), images={args.images}, draws={args.draws}, rounds={args.rounds}, "
        f"torch {torch.__version__}"
    )
    head = (
        f"{'model':5} {'noise':18} {'forward ms':>10} {'MC ms/draw':>10} {'ratio med':>9} {'ratio min':>9}"
        f" {'parts':>5} {'fwd parts ms':>12} {'ratio med':>9} {'ratio min':>9}"
    )
    if args.reference:
        head += f" {'old ms/draw':>11} {'speed-up med':>12} {'min':>5}"
    print(head)
    for mname in args.models.split(","):
        model = MODELS[mname]().to(device).eval()
        for nname, noise in noises.items():
            ref = (
                ReferenceSampling(noise)
                if args.reference and isinstance(noise, ProfileNoise) and not noise._fast()
                else None
            )
            r = paired_rounds(model, x, y, noise, ref, args.draws, device, args.rounds, args.chunk)
            line = (
                f"{mname:5} {nname:18} {r['forward_ms']:10.3f} {r['mc_ms']:10.3f} "
                f"{r['ratio_median']:9.2f} {r['ratio_min']:9.2f} {r['part']:5d} {r['forward_parts_ms']:12.3f} "
                f"{r['ratio_parts_median']:9.2f} {r['ratio_parts_min']:9.2f}"
            )
            if ref is not None:
                line += f" {r['ref_ms']:11.3f} {r['speedup_median']:12.2f} {r['speedup_min']:5.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
