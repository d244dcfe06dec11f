"""Training-method plugin interface and the per-run context the training loop hands to methods."""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
from torch import Tensor, nn

from models.config import TrainConfig
from models.methods.options import MethodOptions, parse_options
from models.noise.base import WeightNoise

OptionsT = TypeVar("OptionsT", bound=MethodOptions)


@dataclass
class TrainContext:
    """State of one training run, shared between the loop and the training method."""

    model: nn.Module  # the model being trained; DDP-wrapped under torchrun
    noise: WeightNoise | None  # training/validation noise (None = clean run)
    optimizer: torch.optim.Optimizer
    device: torch.device
    generator: torch.Generator  # noise generator on ``device`` (seeded per rank)
    config: TrainConfig
    num_classes: int
    train_loader: Iterable | None = None
    val_loader: Iterable | None = None
    scaler: Any = None  # torch.amp.GradScaler when fp16 AMP is on, else None
    amp_dtype: torch.dtype | None = None  # autocast dtype on CUDA, None when AMP is off
    step: int = 0  # optimizer steps done so far
    epoch: int = 0  # current epoch (0-based)
    rank: int = 0
    world_size: int = 1
    resuming: bool = False  # True when the run continues from a checkpoint
    extra: dict[str, Any] = field(default_factory=dict)  # free slot for methods

    @property
    def raw_model(self) -> nn.Module:
        """The user's module without a DistributedDataParallel wrapper."""
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context on CUDA when AMP is enabled, else a no-op."""
        if self.amp_dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` (scaled under fp16 AMP); gradients accumulate until the loop steps."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def forward(self, x: Tensor) -> Tensor:
        """Clean forward pass of the trained model."""
        return self.raw_model(x)

    def noisy_forward(
        self, x: Tensor, noise: WeightNoise | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Forward pass with one fresh noise draw on the Conv/Linear weights (``noise`` defaults to ctx.noise)."""
        from models.noise.apply import noisy_forward

        noise = self.noise if noise is None else noise
        if noise is None:
            return self.raw_model(x)
        return noisy_forward(self.raw_model, x, noise, self.generator if generator is None else generator)

    def add_parameters(self, params: Iterable[nn.Parameter], **group_options: Any) -> None:
        """Add extra trainable parameters (auxiliary heads etc.) to the optimizer as a new group."""
        params = list(params)
        if params:
            self.optimizer.add_param_group({"params": params, **group_options})


class TrainingMethod(abc.ABC, Generic[OptionsT]):
    """A training method plugin: how one batch turns into gradients on the clean weights.

    A subclass names itself (`name`, as registered in `models.methods.METHODS`) and its frozen
    `Options` dataclass; `__init__` parses the keyword options into `self.options`.
    """

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions  # no options unless a method declares some

    def __init__(self, **options: Any) -> None:
        self.options: OptionsT = self._parse_options(options)

    def _parse_options(self, options: dict[str, Any]) -> OptionsT:
        return cast(OptionsT, parse_options(self.Options, self.name, options))

    @classmethod
    def description(cls) -> str:
        """First line of the class's own docstring: what `--list-methods` shows next to the name."""
        doc = inspect.cleandoc(cls.__doc__ or "")
        return doc.splitlines()[0] if doc else ""

    def prepare(self, ctx: TrainContext) -> None:
        """Called once before the first epoch (build heads, train teachers, ...); default does nothing."""

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """Called at the start of every epoch (e.g. noise ramp-up); default does nothing."""

    @abc.abstractmethod
    def training_step(self, ctx: TrainContext, x: Tensor, y: Tensor) -> dict[str, float]:
        """Compute the loss(es) of one batch and call ``ctx.backward``; return logged scalars incl. "loss".

        The loop zeroes gradients before and steps the optimizer after this call.
        """

    def export_model(self, model: nn.Module) -> nn.Module:
        """The network that is saved and evaluated (e.g. without auxiliary heads); default: unchanged."""
        return model

    def state_dict(self) -> dict[str, Any]:
        """Method-private state (heads, teachers) saved in checkpoints for resume; default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output after ``prepare`` on resume; default: nothing to restore."""
