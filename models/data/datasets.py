"""Load a dataset by name into normalised in-memory tensors; nothing is ever downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.data.readers import read_cifar_pickle, read_idx

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")


@dataclass
class Dataset:
    """Train and test splits as float tensors (N, C, H, W), normalised with the train mean/std."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


def _normalise(xtr: np.ndarray, xte: np.ndarray) -> tuple[Tensor, Tensor]:
    xtr = xtr.astype(np.float32)
    xte = xte.astype(np.float32)
    mean = xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = xtr.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    return torch.from_numpy((xtr - mean) / std), torch.from_numpy((xte - mean) / std)


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    return xtr, ytr, xte, yte, 10


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find(root: Path, subdirs: tuple[str, ...], names: tuple[str, ...], what: str) -> list[Path]:
    """First folder among root/<subdir> holding all ``names`` (each optionally .gz)."""
    tried = []
    for sub in subdirs:
        folder = root / sub if sub else root
        tried.append(str(folder))
        found = []
        for n in names:
            p = folder / n
            p = p if p.is_file() else folder / (n + ".gz")
            if not p.is_file():
                break
            found.append(p)
        else:
            return found
    raise FileNotFoundError(
        f"{what} not found under {root}: expected {', '.join(names)} (or .gz) in one of {', '.join(tried)}"
    )


def _mnist(root: Path, folder: str, what: str):
    paths = _find(root, ("", "raw", f"{folder}/raw", folder), _MNIST_FILES, what)
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    if xtr.ndim != 3 or xte.ndim != 3 or len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"{what} files under {root} have inconsistent shapes")
    return xtr[:, None] / 255.0, ytr.astype(np.int64), xte[:, None] / 255.0, yte.astype(np.int64), 10


def _cifar10(root: Path):
    names = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    paths = _find(root, ("cifar-10-batches-py", ""), names, "CIFAR-10")
    parts = [read_cifar_pickle(p, "labels") for p in paths]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    return xtr / 255.0, ytr, parts[5][0] / 255.0, parts[5][1], 10


def _cifar100(root: Path):
    paths = _find(root, ("cifar-100-python", ""), ("train", "test"), "CIFAR-100")
    xtr, ytr = read_cifar_pickle(paths[0], "fine_labels")
    xte, yte = read_cifar_pickle(paths[1], "fine_labels")
    return xtr / 255.0, ytr, xte / 255.0, yte, 100


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load ``name`` (see DATASETS); on-disk datasets need ``root`` in torchvision's layout."""
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    if key == "digits":
        xtr, ytr, xte, yte, k = _digits()
    else:
        if root is None:
            raise ValueError(f"dataset {name!r} is read from a local folder: pass its path (--data-root)")
        r = Path(root)
        if not r.is_dir():
            raise FileNotFoundError(f"dataset folder {r} does not exist")
        if key == "mnist":
            xtr, ytr, xte, yte, k = _mnist(r, "MNIST", "MNIST")
        elif key == "fashion_mnist":
            xtr, ytr, xte, yte, k = _mnist(r, "FashionMNIST", "Fashion-MNIST")
        elif key == "cifar10":
            xtr, ytr, xte, yte, k = _cifar10(r)
        else:
            xtr, ytr, xte, yte, k = _cifar100(r)
    if ytr.size and (ytr.min() < 0 or max(ytr.max(), yte.max()) >= k):
        raise ValueError(f"dataset {name!r}: labels outside 0..{k - 1}")
    x_train, x_test = _normalise(np.asarray(xtr), np.asarray(xte))
    return Dataset(
        key, x_train, torch.as_tensor(ytr, dtype=torch.int64), x_test, torch.as_tensor(yte, dtype=torch.int64), k
    )
