"""Training contexts for method tests: a run on digits before any training, and a bare SGD step context."""

from __future__ import annotations

import torch

from models.architectures import build_model
from models.config import TrainConfig
from models.data import load_dataset
from models.methods.base import TrainContext
from models.noise.base import WeightNoise
from models.noise.factory import noise_from_spec


def digits_context(n_train: int = 480, val: bool = True) -> TrainContext:
    """Small CNN, Gaussian sigma_d 0.2, Adam; n_train digits in batches of 32, a 200-sample validation split."""
    d = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8, channels=(4, 8), hidden=32)
    xt, yt = d.x_train[:n_train], d.y_train[:n_train]
    return TrainContext(
        model=model,
        noise=noise_from_spec({"family": "gaussian", "sigma": 0.2}),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        config=TrainConfig(epochs=3, lr=1e-2),
        num_classes=10,
        train_loader=[(xt[i : i + 32], yt[i : i + 32]) for i in range(0, n_train, 32)],
        val_loader=[(d.x_train[1000:1200], d.y_train[1000:1200])] if val else None,
    )


def sgd_context(model: torch.nn.Module, noise: WeightNoise | None, num_classes: int, seed: int = 0) -> TrainContext:
    """CPU, SGD at lr 0.1, default TrainConfig, the noise generator seeded `seed`: for replaying single steps."""
    return TrainContext(
        model=model,
        noise=noise,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        config=TrainConfig(),
        num_classes=num_classes,
    )
