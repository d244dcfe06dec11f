"""The analog tile forward on a model's Conv/Linear layers while a context is open: training, plain and Monte Carlo.

``with analog_tiles(model, "ibm_table1", calibration=x) as tiles:`` swaps the ``forward`` attribute of every
Conv1d/2d/3d and Linear instance (the model's classes are untouched) for the analog MVM of
models.analog.forward, and registers the tiles so that models.batched runs the analog path too, folded or
under vmap. Leaving the context restores the forwards. Per-layer input ranges alpha live in
``tiles.input_ranges`` (Parameters the caller may train), not in the model.

Noise of a plain forward comes from ``tiles.generator``. In Monte Carlo, pass ``tiles.draws(noise)`` to
``evaluate_mc``: draw i's per-MVM noise then comes from its own streams, seeded from draw i's generator, so a
seeded run gives the same numbers for any chunking and either engine. Without it, batched forwards seed their
draws from ``tiles.generator`` (reproducible, but dependent on the chunking).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from models.analog.forward import (
    ANALOG_LAYERS,
    FoldedConvLayout,
    FoldedLinearLayout,
    LayerPlan,
    Normal,
    SingleLayout,
    compensation,
    layer_forward,
    plan_layer,
    tile_scales,
)
from models.analog.tile import AnalogTileConfig, analog_config
from models.noise.base import WeightNoise, randn_draws

_ACTIVE: weakref.WeakKeyDictionary[nn.Module, AnalogTiles] = weakref.WeakKeyDictionary()
_MVM_STREAM, _COMP_STREAM = 2, 3  # sub-streams of a draw's seed: per-MVM noise, drift-compensation reads


def _tensor(mod: nn.Module, name: str) -> Tensor | None:
    """A layer's weight or bias as it is now (functional_call's tensor while one is swapped in), None if absent."""
    t = getattr(mod, name, None)
    return t if isinstance(t, Tensor) else None


def active_tiles(model: nn.Module) -> AnalogTiles | None:
    """The analog tiles open on ``model`` (models.batched asks), or None."""
    return _ACTIVE.get(model)


def derive_generator(seed: int, stream: int, device: torch.device | str) -> torch.Generator:
    """A generator for sub-stream ``stream`` of a 63-bit ``seed`` (numpy SeedSequence, as models.montecarlo)."""
    key = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, int(stream)]
    s = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0])
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(s & 0x7FFF_FFFF_FFFF_FFFF)
    return g


@dataclass
class DrawStreams:
    """Per-draw generators of one batched forward: per-MVM noise and drift-compensation reads."""

    mvm: list[torch.Generator]
    comp: list[torch.Generator]

    @classmethod
    def from_seeds(cls, seeds: list[int], device: torch.device | str) -> DrawStreams:
        return cls(
            [derive_generator(s, _MVM_STREAM, device) for s in seeds],
            [derive_generator(s, _COMP_STREAM, device) for s in seeds],
        )


class _Record:
    """Mode of the shape-finding pass before vmap: each noise request is answered with zeros and remembered."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def normal(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        self.shapes.append(shape)
        return torch.zeros(shape, device=like.device, dtype=like.dtype)


class _Queue:
    """Mode inside vmap: noise and compensation factors drawn before the vmap, handed out in call order."""

    def __init__(self, noises: list[Tensor], comps: dict[str, list[Tensor]]) -> None:
        self.noises, self.comps, self.i = noises, comps, 0

    def normal(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        e = self.noises[self.i]
        self.i += 1
        if tuple(e.shape) != tuple(shape):
            raise RuntimeError(
                f"analog vmap: noise request {self.i} is {tuple(shape)}, the shape pass saw {tuple(e.shape)}"
            )
        return e


class AnalogTiles:
    """The analog tile model attached to the Conv/Linear layers of one network (enter it as a context)."""

    def __init__(
        self,
        model: nn.Module,
        config: AnalogTileConfig | str = "ibm_table1",
        *,
        input_ranges: Mapping[str, float | Tensor] | None = None,
        calibration: Tensor | Iterable[Tensor] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        digital: Iterable[str] = (),
    ) -> None:
        self.model = model
        self.config = analog_config(config) if isinstance(config, str) else config
        keep = set(digital)
        self.modules: dict[str, nn.Module] = {}
        self.plans: dict[str, LayerPlan] = {}
        self.weights: dict[str, nn.Parameter] = {}  # the programmed (clean) weights: the model's Parameters
        for name, mod in model.named_modules():
            if type(mod) in ANALOG_LAYERS and isinstance(getattr(mod, "weight", None), nn.Parameter):
                if name in keep:
                    continue
                self.modules[name] = mod
                self.plans[name] = plan_layer(mod, self.config)
                self.weights[name] = mod.weight
        unknown = sorted(keep - {n for n, _ in model.named_modules()})
        if unknown:
            raise ValueError(f"analog tiles: no layer named {', '.join(unknown)} to keep digital")
        if not self.modules:
            raise ValueError("analog tiles: the model has no Conv1d/2d/3d or Linear layer to put on tiles")
        self.device = next(iter(self.weights.values())).device
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        self.generator = generator
        self._streams: DrawStreams | None = None
        self._mode: _Record | _Queue | None = None
        self._saved: list[tuple[nn.Module, Any]] | None = None
        self.input_ranges: dict[str, nn.Parameter] = {}
        if self.config.input_range:
            if input_ranges is not None:
                self.load_input_ranges(input_ranges)
            elif calibration is not None:
                self.calibrate(calibration)
            else:
                raise ValueError(
                    "analog tiles with an input range need input_ranges= (e.g. from IBM-HWA training) "
                    "or calibration= (a batch of inputs)"
                )

    # ---- context
    def __enter__(self) -> AnalogTiles:
        if self._saved is not None:
            raise RuntimeError("these analog tiles are already open")
        if self.model in _ACTIVE:
            raise RuntimeError("the model already has analog tiles open")
        self._saved = []
        if not self.config.is_ideal:
            for name, mod in self.modules.items():
                self._saved.append((mod, vars(mod).get("forward")))
                mod.forward = self._layer_forward(name)
        _ACTIVE[self.model] = self
        return self

    def __exit__(self, *exc: object) -> None:
        for mod, prev in self._saved or []:
            if prev is None:
                del mod.forward
            else:
                mod.forward = prev
        self._saved = None
        _ACTIVE.pop(self.model, None)

    @property
    def is_open(self) -> bool:
        return self._saved is not None

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """The digital model for a while (calibration, folding checks); the tiles reopen afterwards."""
        was_open = self.is_open
        if was_open:
            self.__exit__()
        try:
            yield
        finally:
            if was_open:
                self.__enter__()

    # ---- input ranges
    def parameters(self) -> list[nn.Parameter]:
        """The learnable input ranges, one scalar per analog layer (empty without an input range)."""
        return list(self.input_ranges.values())

    def _set_range(self, name: str, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"analog tiles: the input range of {name or 'the model'} must be > 0, got {value}")
        p = self.input_ranges.get(name)
        if p is None:
            dtype = self.weights[name].dtype
            self.input_ranges[name] = nn.Parameter(torch.tensor(value, device=self.device, dtype=dtype))
        else:
            with torch.no_grad():
                p.fill_(value)

    def load_input_ranges(self, ranges: Mapping[str, float | Tensor]) -> None:
        """Set alpha of every analog layer from ``{layer name: alpha}`` (e.g. a trained model's method state)."""
        missing = sorted(set(self.modules) - set(ranges))
        extra = sorted(set(ranges) - set(self.modules))
        if missing or extra:
            raise ValueError(
                f"analog tiles: input ranges do not match the analog layers (missing: {', '.join(missing) or '-'}; "
                f"unknown: {', '.join(extra) or '-'})"
            )
        for name, v in ranges.items():
            self._set_range(name, float(v))

    @torch.no_grad()
    def calibrate(self, batches: Tensor | Iterable[Tensor]) -> dict[str, float]:
        """alpha = ``input_range_std`` x the std of each analog layer's input over ``batches`` (digital forward, eval)."""
        data = [batches] if isinstance(batches, Tensor) else list(batches)
        sums = {n: torch.zeros(3, dtype=torch.float64, device=self.device) for n in self.modules}

        def hook_for(name: str) -> Callable[..., None]:
            def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
                x = args[0].detach().double()
                s = sums[name]
                s[0] += x.sum()
                s[1] += (x * x).sum()
                s[2] += x.numel()

            return hook

        hooks = [m.register_forward_pre_hook(hook_for(n)) for n, m in self.modules.items()]
        was_training = self.model.training
        self.model.eval()
        try:
            with self.suspended():
                for xb in data:
                    self.model(xb.to(self.device))
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        out = {}
        for name, s in sums.items():
            cnt = float(s[2])
            if cnt == 0:
                raise ValueError(f"analog tiles: calibration never ran layer {name or 'the model'}")
            mean = float(s[0]) / cnt
            var = max(float(s[1]) / cnt - mean * mean, 0.0)
            std = math.sqrt(var)
            out[name] = self.config.input_range_std * std if std > 0 else 1.0
            self._set_range(name, out[name])
        return out

    def input_range_state(self) -> dict[str, float]:
        """``{layer name: alpha}``, JSON-able (what ``load_input_ranges`` takes)."""
        return {k: float(v.detach()) for k, v in self.input_ranges.items()}

    @torch.no_grad()
    def clamp_ranges(self, minimum: float = 1e-6) -> None:
        """Keep every alpha positive after an optimizer step."""
        for p in self.input_ranges.values():
            p.clamp_(min=minimum)

    def _alpha(self, name: str, detach: bool = False) -> Tensor | None:
        if not self.config.input_range:
            return None
        a = self.input_ranges[name]
        return a.detach() if detach else a

    # ---- one draw
    def _normal(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def _layer_forward(self, name: str) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            return self._forward(name, x)

        return forward

    def _forward(self, name: str, x: Tensor) -> Tensor:
        """The analog forward of one layer, one draw: the module's current weight (functional_call's, if swapped)."""
        mod, plan, cfg = self.modules[name], self.plans[name], self.config
        w = _tensor(mod, "weight")
        assert w is not None
        clean = self.weights[name].detach()
        gam = tile_scales(plan, clean, cfg)
        mode = self._mode
        normal: Normal
        comps: list[Tensor] | None
        if isinstance(mode, _Queue):
            normal, comps = mode.normal, mode.comps.get(name)
        elif isinstance(mode, _Record):
            normal, comps = mode.normal, None
        else:
            normal = self._normal
            comps = compensation(plan, cfg, w.detach(), clean, gam, self._normal)
        layout = SingleLayout(plan, normal)
        inplace = not isinstance(mode, _Queue)
        return layer_forward(plan, cfg, layout, x, w, gam, comps, self._alpha(name), _tensor(mod, "bias"), inplace)

    # ---- Monte Carlo
    def draws(self, noise: WeightNoise | None) -> AnalogDraws:
        """``noise`` for ``evaluate_mc`` whose draws also seed the tiles' per-MVM noise (None: the tiles' noise only)."""
        return AnalogDraws(self, noise)

    def bind_draws(self, seeds: list[int], device: torch.device | str) -> None:
        """Per-draw streams for the next batched forwards: draw k's from ``seeds[k]`` (a draw generator's seed)."""
        self._streams = DrawStreams.from_seeds(seeds, device)

    def _draw_streams(self, n: int, device: torch.device) -> DrawStreams:
        s = self._streams
        if s is not None and len(s.mvm) == n and s.mvm[0].device == device:
            return s
        seeds = torch.randint(0, 2**62, (n,), generator=self.generator, device=self.generator.device).tolist()
        return DrawStreams.from_seeds([int(v) for v in seeds], device)

    def folded_forwards(self, stacked: dict[str, Tensor], n: int) -> dict[str, Callable[[Tensor], Tensor]]:
        """``forward`` replacements of the analog layers for models.batched's folded layout (none if ideal)."""
        if self.config.is_ideal:
            return {}
        first = next(iter(stacked.values()))
        streams = self._draw_streams(n, first.device)
        out = {}
        for name in self.modules:
            key = f"{name}.weight" if name else "weight"
            w = stacked.get(key)
            if w is None:
                w = self.weights[name].detach().expand(n, *self.weights[name].shape)
            out[name] = self._folded(name, w, n, streams)
        return out

    def _folded(self, name: str, w: Tensor, n: int, streams: DrawStreams) -> Callable[[Tensor], Tensor]:
        mod, plan, cfg = self.modules[name], self.plans[name], self.config
        clean = self.weights[name].detach()
        gam = tile_scales(plan, clean, cfg)
        comps = compensation(plan, cfg, w, clean, gam, lambda shape, like: randn_draws(shape, like, streams.comp))
        alpha = self._alpha(name, detach=True)
        b = _tensor(mod, "bias")
        bias = None if b is None else b.detach()
        if plan.kind == "conv":
            cin = plan.in_per_group * plan.groups

            def conv_forward(x: Tensor) -> Tensor:
                shared = x.shape[1] == cin and n > 1
                if shared and plan.groups != 1:
                    x, shared = x.repeat(1, n, *([1] * (x.dim() - 2))), False
                if not shared and x.shape[1] != n * cin:
                    raise ValueError(f"conv input has {x.shape[1]} channels, expected {cin} or {n * cin}")
                parts = []
                for i0, i1 in _groups(n, x.numel() // (x.shape[1] if shared else x.shape[1] // n) * plan.out_features):
                    xg = x if shared else x[:, i0 * cin : i1 * cin]
                    layout = FoldedConvLayout(plan, i1 - i0, shared, streams.mvm[i0:i1])
                    parts.append(layer_forward(plan, cfg, layout, xg, w[i0:i1], gam, _part(comps, i0, i1), alpha, bias))
                return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

            return conv_forward
        fin, fout = plan.in_per_group, plan.out_features

        def linear_forward(x: Tensor) -> Tensor:
            lead = x.shape[:-1]
            shared = x.shape[-1] == fin and n > 1
            if shared:
                xs = x.reshape(-1, fin).t()  # (in, M)
            elif x.shape[-1] == n * fin:
                xs = x.reshape(-1, n, fin).permute(1, 2, 0)  # (n, in, M)
            else:
                raise ValueError(f"linear input has {x.shape[-1]} features, expected {fin} or {n * fin}")
            parts = []
            for i0, i1 in _groups(n, xs.shape[-1] * fout):
                layout = FoldedLinearLayout(plan, i1 - i0, shared, streams.mvm[i0:i1])
                xg = xs if shared else xs[i0:i1]
                parts.append(layer_forward(plan, cfg, layout, xg, w[i0:i1], gam, _part(comps, i0, i1), alpha, bias))
            y = parts[0] if len(parts) == 1 else torch.cat(parts, 0)  # (n, out, M)
            return y.reshape(n * fout, -1).t().reshape(*lead, n * fout)

        return linear_forward

    def vmap_forward(self, stacked: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits of every draw, (n, B, ...), with vmap over functional_call; noise drawn per draw before the vmap.

        A first pass with draw 0's weights records the shape of every noise request in call order; each draw's
        noise is then drawn from its stream in that order, as the folded layout draws it, and handed out inside
        the vmap, so both engines see the same noise.
        """
        first = next(iter(stacked.values()))
        n = first.shape[0]
        if self.config.is_ideal:
            return vmap(lambda p, xb: functional_call(self.model, p, (xb,)), in_dims=(0, None))(stacked, x)
        streams = self._draw_streams(n, first.device)
        comps: dict[str, list[Tensor]] = {}
        with torch.no_grad():
            for name in self.modules:
                key = f"{name}.weight" if name else "weight"
                w = stacked.get(key)
                if w is None:
                    w = self.weights[name].detach().expand(n, *self.weights[name].shape)
                plan, clean = self.plans[name], self.weights[name].detach()
                c = compensation(
                    plan,
                    self.config,
                    w,
                    clean,
                    tile_scales(plan, clean, self.config),
                    lambda shape, like: randn_draws(shape, like, streams.comp),
                )
                if c is not None:
                    comps[name] = c
            rec = _Record()
            with self._in_mode(rec):
                functional_call(self.model, {k: v[0] for k, v in stacked.items()}, (x,))
            noises = [randn_draws(shape, first, streams.mvm) for shape in rec.shapes]

        def one(p: dict[str, Tensor], nz: list[Tensor], cp: dict[str, list[Tensor]], xb: Tensor) -> Tensor:
            with self._in_mode(_Queue(nz, cp)):
                return functional_call(self.model, p, (xb,))

        return vmap(one, in_dims=(0, 0, 0, None))(stacked, noises, comps, x)

    @contextlib.contextmanager
    def _in_mode(self, mode: _Record | _Queue) -> Iterator[None]:
        prev, self._mode = self._mode, mode
        try:
            yield
        finally:
            self._mode = prev


_GROUP_BYTES = 8 << 20  # a folded layer runs its draws in groups whose outputs stay below this (heap, not mmap)


def _groups(n: int, out_numel_per_draw: int, itemsize: int = 4) -> list[tuple[int, int]]:
    """Draw ranges [i0, i1) of a folded layer: temporaries of a few MiB are reused by the allocator, larger ones
    are fresh pages each time; every draw's noise comes from its own stream, so the grouping changes no number."""
    k = max(1, _GROUP_BYTES // max(1, out_numel_per_draw * itemsize))
    return [(i0, min(n, i0 + k)) for i0 in range(0, n, k)]


def _part(comps: list[Tensor] | None, i0: int, i1: int) -> list[Tensor] | None:
    return None if comps is None else [c[i0:i1] for c in comps]


class AnalogDraws(WeightNoise):
    """A weight noise for ``evaluate_mc`` whose draws also key the analog tiles' per-MVM noise, one stream per draw.

    Sampling is the wrapped noise's (the clean weights when None); each batch of draws binds streams seeded from
    its draw generators' seeds (``torch.Generator.initial_seed``), which the next batched forwards consume in order.
    """

    def __init__(self, tiles: AnalogTiles, noise: WeightNoise | None) -> None:
        self.tiles, self.noise = tiles, noise

    def sample_batch(
        self, weights: dict[str, Tensor], n_draws: int, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        if self.noise is None:
            return {k: v.expand(n_draws, *v.shape) for k, v in weights.items()}
        return self.noise.sample_batch(weights, n_draws, generator)

    def scaled(self, factor: float) -> WeightNoise:
        return AnalogDraws(self.tiles, None if self.noise is None else self.noise.scaled(factor))

    def noise_std(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.noise is None:
            return {k: torch.zeros_like(v) for k, v in weights.items()}
        return self.noise.noise_std(weights)

    @property
    def magnitude(self) -> float | None:
        return None if self.noise is None else self.noise.magnitude

    def describe(self) -> dict:
        return {} if self.noise is None else self.noise.describe()

    def _bind(self, generators: list[torch.Generator], weights: dict[str, Tensor]) -> None:
        device = next(iter(weights.values())).device
        self.tiles.bind_draws([int(g.initial_seed()) for g in generators], device)

    def sample_draws(self, weights: dict[str, Tensor], generators: list[torch.Generator]) -> dict[str, Tensor]:
        self._bind(generators, weights)
        if self.noise is None:
            return self.sample_batch(weights, len(generators))
        return self.noise.sample_draws(weights, generators)

    def draw_sampler(self, weights: dict[str, Tensor]) -> Callable[[list[torch.Generator]], dict[str, Tensor]]:
        inner = None if self.noise is None else self.noise.draw_sampler(weights)

        def sample(generators: list[torch.Generator]) -> dict[str, Tensor]:
            self._bind(generators, weights)
            if inner is None:
                return self.sample_batch(weights, len(generators))
            return inner(generators)

        return sample


@contextlib.contextmanager
def analog_tiles(
    model: nn.Module,
    config: AnalogTileConfig | str = "ibm_table1",
    *,
    input_ranges: Mapping[str, float | Tensor] | None = None,
    calibration: Tensor | Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    digital: Iterable[str] = (),
) -> Iterator[AnalogTiles]:
    """Run ``model``'s Conv/Linear layers on analog tiles inside the ``with`` block (plain, folded and vmap forwards).

    ``input_ranges``: alpha per layer (a trained model's); else ``calibration`` inputs set alpha to
    ``input_range_std`` standard deviations of each layer's input. ``digital``: layer names kept digital.
    """
    tiles = AnalogTiles(
        model,
        config,
        input_ranges=input_ranges,
        calibration=calibration,
        generator=generator,
        seed=seed,
        digital=digital,
    )
    with tiles:
        yield tiles
