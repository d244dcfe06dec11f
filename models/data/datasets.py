"""Load a dataset by name into normalised in-memory tensors; nothing is ever downloaded."""

from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from firmware_protocol.fileformat import atomic_write
from models.data.readers import read_cifar_pickle, read_idx

DATASETS = ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100")

# the stream of the validation split's generator, apart from every other use of the run's seed
_VAL_STREAM = 0x76616C


@dataclass
class Dataset:
    """Train, optional validation, and test splits as float tensors (N, C, H, W), normalised with the train mean/std.

    1-D signals (MNIST-1D) are stored as (N, L, 1, 1): L features as the channels of a 1x1 image, which
    the ``mlp`` (in_channels * image_size**2 inputs) takes as they are; the convolutional networks need images.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    x_val: Tensor | None = None  # held out of the training split for model and hyper-parameter choices
    y_val: Tensor | None = None

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def with_validation(self, fraction: float, seed: int) -> Dataset:
        """A copy with a class-stratified ``fraction`` of the training split held out as validation (test untouched).

        The same (data, fraction, seed) gives the same split on every machine (numpy's PCG64, seeded from
        ``seed`` and a stream of its own). The validation size is round(fraction * N), at least 1 and at most
        N - 1; it is shared over the classes in proportion to their training counts (largest remainders,
        ties to the lower class), and each class's held-out samples are a seeded random subset. Both parts
        keep the original sample order. Normalisation stays that of the full training split (its mean and
        std include the held-out images, never the test images). ``fraction`` 0 returns the dataset as is.
        """
        if not (isinstance(fraction, (int, float)) and 0.0 <= fraction < 1.0):
            raise ValueError(
                f"val_fraction must be in [0, 1), got {fraction!r}: give e.g. 0.1 (or 0 for no validation)"
            )
        if self.x_val is not None:
            raise ValueError(f"dataset {self.name!r} already has a validation split; split a dataset only once")
        if fraction == 0:
            return self
        y = self.y_train.numpy()
        n = len(y)
        if n < 2:
            raise ValueError(f"dataset {self.name!r} has {n} training sample(s): a validation split needs at least 2")
        n_val = min(max(math.floor(fraction * n + 0.5), 1), n - 1)
        classes, counts = np.unique(y, return_counts=True)
        share = counts * (n_val / n)
        quota = np.floor(share).astype(np.int64)
        by_remainder = np.argsort(-(share - quota), kind="stable")
        quota[by_remainder[: n_val - int(quota.sum())]] += 1
        rng = np.random.default_rng(np.random.SeedSequence([seed % 2**63, _VAL_STREAM]))
        held = np.zeros(n, dtype=bool)
        for c, q in zip(classes, quota):
            members = np.flatnonzero(y == c)
            held[rng.permutation(members)[:q]] = True
        val_idx = torch.from_numpy(np.flatnonzero(held))
        train_idx = torch.from_numpy(np.flatnonzero(~held))
        return dataclasses.replace(
            self,
            x_train=self.x_train[train_idx],
            y_train=self.y_train[train_idx],
            x_val=self.x_train[val_idx],
            y_val=self.y_train[val_idx],
        )


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


# ------------------------------------------------------------------------------------------------ MNIST-1D

MNIST1D_LENGTH = 40  # samples per signal (the package's final_seq_length)
_MNIST1D_CACHE_REVISION = 1  # bump when the cached arrays' layout changes


def _user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/rram-hil, else ~/.cache/rram-hil."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rram-hil"


def _mnist1d_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mnist1d")
    except PackageNotFoundError:
        raise ValueError("dataset 'mnist1d' needs the mnist1d package: pip install mnist1d") from None


def mnist1d_arrays(**overrides: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate MNIST-1D offline with the package's generator and default arguments (plus ``overrides``).

    Returns float32 signals (N, 40) and int64 labels for the train and test splits (4000 / 1000 by
    default, the package's seed 42). The generator seeds Python's and numpy's global generators; their
    states are restored afterwards, so loading the data does not change a seeded run.
    """
    _mnist1d_version()
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for k, v in overrides.items():
        if not hasattr(args, k):
            raise ValueError(f"mnist1d has no dataset argument {k!r}")
        setattr(args, k, v)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return (
        np.asarray(d["x"], dtype=np.float32),
        np.asarray(d["y"], dtype=np.int64),
        np.asarray(d["x_test"], dtype=np.float32),
        np.asarray(d["y_test"], dtype=np.int64),
    )


_MNIST1D_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_mnist1d_cache(path: Path) -> tuple[np.ndarray, ...] | None:
    """The cached arrays, or None when the file is missing or not a complete cache (it is then regenerated)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = tuple(np.asarray(z[k]) for k in _MNIST1D_KEYS)
    except (OSError, ValueError, KeyError, EOFError):
        return None
    xtr, ytr, xte, yte = arrays
    ok = (
        xtr.ndim == 2
        and xte.ndim == 2
        and xtr.shape[1] == xte.shape[1] == MNIST1D_LENGTH
        and ytr.shape == (len(xtr),)
        and yte.shape == (len(xte),)
        and np.isfinite(xtr).all()
        and np.isfinite(xte).all()
    )
    return arrays if ok else None


def _mnist1d(root: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """MNIST-1D as (N, 40, 1, 1) signals, cached (generation takes seconds) under root/mnist1d or the user cache.

    The cache file is named by the package version and a revision of this layout, so a new package
    release regenerates; an unwritable cache folder only costs the regeneration.
    """
    folder = root / "mnist1d" if root is not None else _user_cache_dir()
    path = folder / f"mnist1d-{_mnist1d_version()}-r{_MNIST1D_CACHE_REVISION}.npz"
    arrays = _read_mnist1d_cache(path)
    if arrays is None:
        arrays = mnist1d_arrays()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, force=True) as tmp, open(tmp, "wb") as f:
                np.savez(f, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
        except OSError:
            pass  # no cache: the next load generates again
    xtr, ytr, xte, yte = arrays
    return xtr[:, :, None, None], ytr, xte[:, :, None, None], yte, 10


def load_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """Load ``name`` (see DATASETS); on-disk datasets need ``root`` in torchvision's layout.

    ``digits`` is embedded in scikit-learn; ``mnist1d`` is generated offline by the mnist1d package
    and cached under ``root``/mnist1d when ``root`` is given, else under the user cache folder.
    """
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    if key == "digits":
        xtr, ytr, xte, yte, k = _digits()
    elif key == "mnist1d":
        if root is not None and not Path(root).is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist (mnist1d caches its data there)")
        xtr, ytr, xte, yte, k = _mnist1d(Path(root) if root is not None else None)
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
