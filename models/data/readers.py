"""Readers for torchvision's on-disk dataset formats, in numpy only (MNIST idx files, CIFAR pickles)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

_IDX_DTYPES: dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    n = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset < n * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file ({len(raw) - offset} data bytes, need {n * dtype.itemsize})")
    return np.frombuffer(raw, dtype=dtype, count=n, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an IDX file (gzip when the name ends in .gz); used by tests and for exporting data."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder(">").str: k for k, v in _IDX_DTYPES.items()}
    arr = np.asarray(array)
    big = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    key = np.dtype(big.dtype).newbyteorder(">").str
    if key not in codes:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    header = bytes([0, 0, codes[key], arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + big.tobytes())


# What a CIFAR batch may contain besides plain dicts, lists, bytes and numbers: numpy arrays (and their
# dtypes and scalars, as numpy 1.x and 2.x pickle them). Anything else in the file is refused unread.
_CIFAR_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only data (containers, numbers, bytes, numpy arrays): no other callable runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"holds a {module}.{name} object")


def read_cifar_pickle(path: str | Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python pickle: images (N, 3, 32, 32) uint8 and labels (N,) int64 (data only, no code)."""
    with open(path, "rb") as f:
        try:
            d = _DataUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{path}: not a CIFAR batch ({exc}; it is not read because unpickling it could run code)"
            ) from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a CIFAR batch (a {type(d).__name__}, not a dict)")
    key = label_key.encode()
    if b"data" not in d or key not in d:
        raise ValueError(f"{path}: not a CIFAR batch (needs keys 'data' and {label_key!r})")
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(d[key], dtype=np.int64)
