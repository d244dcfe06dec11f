"""Training configuration: one dataclass that the loop, the methods and the checkpoint share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Values of fields added after model files were first written, as those older runs used them: a config
# without "val_fraction" trained on the whole training split and validated on the test split.
LEGACY_DEFAULTS: dict[str, Any] = {"val_fraction": 0.0}


@dataclass
class TrainConfig:
    """Everything a training run needs; saved verbatim in the checkpoint so runs are reproducible."""

    model: str = "cnn"  # architecture name (models.arch registry) or "pkg.mod:factory"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"  # digits | mnist1d | mnist | fashion_mnist | cifar10 | cifar100
    data_root: str | None = None  # folder of an on-disk dataset (digits needs none; mnist1d caches there if given)
    method: str = "vanilla"  # training method name (models.methods.METHODS)
    method_options: dict[str, Any] = field(default_factory=dict)  # raw, as given; the method's Options types them
    noise: dict[str, Any] | None = None  # noise spec (models.noise.factory.noise_from_spec); None = clean
    epochs: int = 10
    batch_size: int = 64  # global batch size (split over data-parallel processes)
    # each process's share of a batch runs as this many equal sub-batches whose gradients are summed, then
    # averaged (less memory; and a run with accumulate=k reduces exactly as k processes would)
    accumulate: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine | none | step:EPOCHS:GAMMA (the LR times GAMMA every EPOCHS epochs)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA only (ignored on CPU)
    val_noise_draws: int = 5  # noise draws for the per-epoch noisy validation accuracy (and the final test one)
    # share of the training split held out (class-stratified, seeded by `seed`) for the per-epoch validation
    # that every model and hyper-parameter choice reads; the test split is evaluated once, after training.
    # 0 = no validation (the whole training split trains; no per-epoch accuracy)
    val_fraction: float = 0.1
    # analog crossbar tile preset every method trains through (models.analog: "ibm_table1", "ideal"; IR drop and
    # drift compensation off in training, as the IBM HWA supplement); None = digital forward
    analog: str | None = None
    checkpoint: str | None = None  # path of the last-epoch checkpoint (written every epoch)
    progress: bool = True  # rank 0: bars with ETA on a terminal, else periodic plain lines (firmware_protocol.progress)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for checkpoints and JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from ``to_dict`` output (older ones get `LEGACY_DEFAULTS`); unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**{**LEGACY_DEFAULTS, **d})
