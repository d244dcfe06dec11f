"""The weight-noise interface: a distribution of device-induced perturbations of Conv/Linear weights."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch
from torch import Tensor


class WeightNoise(abc.ABC):
    """A distribution of device-induced weight perturbations for the Conv/Linear weights of a model.

    Weights are passed as ``{parameter name: tensor}``. Samples are differentiable with respect to
    the clean weights: the perturbation is added to (or multiplies) the clean tensor, and every
    statistic that depends on the weights (scales, device levels) is computed from detached values,
    so the gradient reaches the clean weights as in noise-injection training.
    """

    @abc.abstractmethod
    def sample_batch(
        self, weights: dict[str, Tensor], n_draws: int, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Return ``n_draws`` independent noisy copies of each tensor, shaped ``(n_draws, *shape)``."""

    @abc.abstractmethod
    def scaled(self, factor: float) -> WeightNoise:
        """Return the same noise structure with its magnitude multiplied by ``factor``."""

    @abc.abstractmethod
    def noise_std(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return the per-element standard deviation of the perturbation (same shapes as the weights)."""

    @property
    def magnitude(self) -> float | None:
        """The scalar a paper family is parametrised by (sigma_d, log-normal s, additive eta); None otherwise."""
        return None

    def sample(self, weights: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Return one noisy copy of each tensor (same shapes as the inputs)."""
        return {k: v[0] for k, v in self.sample_batch(weights, 1, generator).items()}

    def sample_draws(self, weights: dict[str, Tensor], generators: list[torch.Generator]) -> dict[str, Tensor]:
        """One draw per generator, stacked ``(len(generators), *shape)``; draw i depends only on generator i.

        The Monte Carlo evaluator seeds one generator per draw so results do not depend on how draws are
        chunked or split across processes. Subclasses may override this to share per-weight work.
        """
        draws = [self.sample(weights, g) for g in generators]
        return {k: torch.stack([d[k] for d in draws]) for k in weights}

    def draw_sampler(self, weights: dict[str, Tensor]) -> Callable[[list[torch.Generator]], dict[str, Tensor]]:
        """A function ``generators -> sample_draws(weights, generators)`` for fixed weights.

        Monte Carlo calls it once per chunk of draws; subclasses precompute the per-weight statistics
        here, once per evaluation, instead of once per chunk. A call's result may live in buffers that
        the next call overwrites, so use it before calling again.
        """
        return lambda generators: self.sample_draws(weights, generators)

    def describe(self) -> dict:
        """Return a JSON-able spec from which ``models.noise.factory.noise_from_spec`` rebuilds this noise."""
        raise TypeError(f"{type(self).__name__} has no serialisable spec")


def per_device_mask(mask: Tensor, w: Tensor, devices: int, what: str) -> Tensor:
    """A boolean mask over the devices of each weight, (*w.shape, devices), from a per-weight or per-device mask."""
    m = mask.to(device=w.device, dtype=torch.bool)
    if m.shape == w.shape:
        return m.unsqueeze(-1).expand(*w.shape, devices)
    if m.shape == (*w.shape, devices):
        return m
    raise ValueError(f"{what} has shape {tuple(m.shape)}, expected {tuple(w.shape)} or {(*w.shape, devices)}")


def randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal samples on ``like``'s device/dtype from ``generator`` (which must live on that device)."""
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def rand(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) samples on ``like``'s device/dtype from ``generator``."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def randn_draws(shape: tuple[int, ...], like: Tensor, generators: list[torch.Generator]) -> Tensor:
    """Standard normals (len(generators), *shape), row i from generator i, filled in place (no stacking copy).

    Row i equals ``torch.randn(shape, generator=generators[i])`` (same stream, same order).
    """
    out = torch.empty((len(generators), *shape), device=like.device, dtype=like.dtype)

    def fill(i: int) -> None:
        out[i].normal_(generator=generators[i])

    map_draws(fill, len(generators), out[0].numel(), [like])
    return out


def map_draws(fill: Callable[[int], None], n: int, numel_per_draw: int, tensors: Iterable[Tensor]) -> None:
    """Run ``fill(i)`` for every draw, in parallel CPU threads when every one of ``tensors`` (what the draws are
    made for) is on the CPU and each draw is large enough; in order otherwise.

    CPU normal_ runs on one core per generator, so independent generators fill their draws in parallel; a GPU
    queues its kernels in order, so threads would gain nothing there.
    """
    workers = min(torch.get_num_threads(), n)
    cpu = all(t.device.type == "cpu" for t in tensors)
    if cpu and workers > 1 and numel_per_draw >= _PARALLEL_FILL_MIN:
        list(_fill_pool(workers, os.getpid()).map(fill, range(n)))
    else:
        for i in range(n):
            fill(i)


_PARALLEL_FILL_MIN = 1 << 15  # below this many numbers per draw, thread hand-off costs more than it saves


@lru_cache(maxsize=4)
def _fill_pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """One pool per process (keyed by pid: a forked child must not reuse its parent's dead threads)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rram-randn")


class DrawBuffers:
    """Output buffers (n, *shape) per tensor name, kept between a sampler's calls (fresh large allocations cost
    page faults as slow as the normals themselves) and grown when a call has more draws."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, like: Tensor, n: int, shape: tuple[int, ...] | None = None) -> Tensor:
        """The first n rows of the buffer for ``name``, each typed and placed like ``like`` and shaped like it
        (or ``shape``)."""
        row = tuple(like.shape) if shape is None else shape
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < n or tuple(buf.shape[1:]) != row:
            buf = self._buffers[name] = torch.empty((n, *row), device=like.device, dtype=like.dtype)
        return buf[:n]


class AffineSampler:
    """Draws ``shift + std * Z`` per tensor for fixed (shift, std): the Gaussian fast path of Monte Carlo.

    Draw i takes, tensor after tensor, ``torch.randn(shape, generator=generators[i])``, the same stream
    as ``WeightNoise.sample`` with that generator. On CPU each draw is filled and transformed by one
    worker thread while its rows are still in cache, into output buffers kept between calls (fresh
    large allocations cost page faults that are as slow as the normals themselves).
    """

    def __init__(self, shifts: dict[str, Tensor], stds: dict[str, Tensor]) -> None:
        self.shifts = shifts
        self.stds = stds
        self._buffers = DrawBuffers()

    def __call__(self, generators: list[torch.Generator]) -> dict[str, Tensor]:
        """One draw per generator, ``{name: (len(generators), *shape)}``, in buffers the next call overwrites."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in (*self.shifts.values(), *self.stds.values())):
            return {n: randn_draws(tuple(s.shape), s, generators) * self.stds[n] + s for n, s in self.shifts.items()}
        n = len(generators)
        out = {name: self._buffers.get(name, shift, n) for name, shift in self.shifts.items()}
        cpu = all(s.device.type == "cpu" for s in self.shifts.values())
        if not cpu:
            for name, o in out.items():
                for i, g in enumerate(generators):
                    o[i].normal_(generator=g)
                torch.addcmul(self.shifts[name], o, self.stds[name], out=o)
            return out

        def fill(i: int) -> None:
            for name, o in out.items():
                row = o[i]
                row.normal_(generator=generators[i])
                torch.addcmul(self.shifts[name], row, self.stds[name], out=row)

        map_draws(fill, n, sum(s.numel() for s in self.shifts.values()), self.shifts.values())
        return out
