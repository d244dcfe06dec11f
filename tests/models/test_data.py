"""Dataset readers on small files written by the test (torchvision layout), and clear errors for missing ones."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from models.data import Dataset, load_dataset
from models.data.readers import read_idx, write_idx


def _mnist_files(folder, n_train=6, n_test=4, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), arr)
    return arrays


def test_idx_header_by_hand(tmp_path):
    raw = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    (tmp_path / "a-idx2-ubyte").write_bytes(raw)
    a = read_idx(tmp_path / "a-idx2-ubyte")
    assert a.dtype == np.uint8 and a.tolist() == [[0, 1, 2], [3, 4, 5]]
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(bytes([0, 0, 0x0C, 1]) + (2).to_bytes(4, "big") + np.array([7, -1], dtype=">i4").tobytes())
    assert read_idx(tmp_path / "b.gz").tolist() == [7, -1]
    (tmp_path / "c").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "d")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_and_fashion_layouts(tmp_path, gz):
    arrays = _mnist_files(tmp_path / "MNIST" / "raw", gz=gz)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    x = arrays["train-images-idx3-ubyte"].astype(np.float32) / 255
    expect = (x - x.mean()) / (x.std() + 1e-8)
    assert np.allclose(ds.x_train[:, 0].numpy(), expect, atol=1e-5)
    _mnist_files(tmp_path / "FashionMNIST" / "raw", gz=gz, seed=1)
    assert load_dataset("fashion-mnist", tmp_path).num_classes == 10


def _cifar_batch(path, n, label_key, classes, seed):
    rng = np.random.default_rng(seed)
    d = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): list(rng.integers(0, classes, n)),
    }
    with open(path, "wb") as f:
        pickle.dump(d, f)
    return d


def test_cifar10_and_cifar100(tmp_path):
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    batches = [_cifar_batch(c10 / f"data_batch_{i}", 3, "labels", 10, i) for i in range(1, 6)]
    _cifar_batch(c10 / "test_batch", 2, "labels", 10, 9)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.in_channels == 3 and ds.image_size == 32
    assert ds.y_train.tolist() == sum((list(b[b"labels"]) for b in batches), [])
    # channel-first layout: the first 1024 bytes of a row are the red plane
    red = batches[0][b"data"][0, :1024].reshape(32, 32).astype(np.float32) / 255
    all_red = np.concatenate([b[b"data"][:, :1024] for b in batches]).astype(np.float32) / 255
    assert np.allclose(ds.x_train[0, 0].numpy(), (red - all_red.mean()) / (all_red.std() + 1e-8), atol=1e-5)
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    _cifar_batch(c100 / "train", 4, "fine_labels", 100, 1)
    _cifar_batch(c100 / "test", 2, "fine_labels", 100, 2)
    assert load_dataset("cifar100", tmp_path).num_classes == 100


def test_missing_files_name_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar100", tmp_path / "nope")
    with pytest.raises(ValueError, match="local folder"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


def test_digits_embedded():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert abs(float(ds.x_train.mean())) < 1e-5 and sorted(set(ds.y_test.tolist())) == list(range(10))


class _Payload:
    """Pickles as a call of os.mkdir: what a hostile 'CIFAR batch' could carry."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.mkdir, (self.target,))


def test_a_cifar_pickle_that_would_run_code_is_refused_unread(tmp_path):
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        _cifar_batch(c10 / f"data_batch_{i}", 3, "labels", 10, i)
    _cifar_batch(c10 / "test_batch", 2, "labels", 10, 9)
    pwned = tmp_path / "pwned"
    with open(c10 / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Payload(str(pwned)), b"labels": [1]}, f)
    with pytest.raises(ValueError) as e:
        load_dataset("cifar10", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "data_batch_3" in msg and "could run code" in msg and "mkdir" in msg
    assert not pwned.exists()


# ------------------------------------------------------------------------------------------ validation split


def _indexed(n: int, classes: int) -> Dataset:
    """A dataset whose training sample i is the number i (class i % classes): splits can be read back as indices."""
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)
    y = torch.arange(n) % classes
    return Dataset("indexed", x, y, -x[:5], y[:5], classes)


def test_validation_split_is_stratified_seeded_and_leaves_the_test_split_alone():
    ds = _indexed(1000, 7)  # class counts 143 x 6 and 142
    a = ds.with_validation(0.1, seed=3)
    assert a.x_val is not None and a.y_val is not None
    val, tr = a.x_val.flatten().long(), a.x_train.flatten().long()
    assert len(val) == 100 and len(tr) == 900
    assert sorted(val.tolist() + tr.tolist()) == list(range(1000))  # disjoint, nothing lost
    assert torch.equal(a.y_val, val % 7) and torch.equal(a.y_train, tr % 7)  # labels travel with their samples
    assert val.tolist() == sorted(val.tolist()) and tr.tolist() == sorted(tr.tolist())  # original order kept
    # shares 14.3 / 14.2 per class sum to 100: 14 each (98) plus one for the two largest remainders (classes 0, 1)
    assert torch.bincount(a.y_val, minlength=7).tolist() == [15, 15, 14, 14, 14, 14, 14]
    assert a.x_test is ds.x_test and a.y_test is ds.y_test
    again, other = ds.with_validation(0.1, seed=3), ds.with_validation(0.1, seed=4)
    assert again.x_val is not None and other.x_val is not None
    assert torch.equal(again.x_val, a.x_val) and not torch.equal(other.x_val, a.x_val)
    # pinned: numpy's PCG64 gives these numbers on every machine
    assert val[:5].tolist() == [3, 8, 33, 70, 85]
    assert ds.with_validation(0.0, seed=3) is ds


def test_validation_split_refuses_bad_input():
    ds = _indexed(10, 2)
    for bad in (-0.1, 1.0, 2, float("nan")):
        with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
            ds.with_validation(bad, seed=0)
    with pytest.raises(ValueError, match="already has a validation split"):
        ds.with_validation(0.5, seed=0).with_validation(0.5, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        _indexed(1, 1).with_validation(0.5, seed=0)
    tiny = _indexed(3, 3).with_validation(0.01, seed=0)  # round(0.03) = 0, raised to one held-out sample
    assert tiny.x_val is not None and len(tiny.x_val) == 1 and len(tiny.x_train) == 2


# ------------------------------------------------------------------------------------------------ MNIST-1D


def test_mnist1d_generation_is_deterministic_and_leaves_the_global_generators_alone():
    import random

    from models.data import mnist1d_arrays

    np.random.seed(7)
    random.seed(7)
    a = mnist1d_arrays(num_samples=200)  # the package's generator, 25x smaller than its default for speed
    b = mnist1d_arrays(num_samples=200)
    after = (np.random.random(), random.random())
    np.random.seed(7)
    random.seed(7)
    assert after == (np.random.random(), random.random())  # the package reseeds both; the states came back
    xtr, ytr, xte, yte = a
    assert xtr.shape == (160, 40) and xte.shape == (40, 40) and xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert (np.bincount(ytr, minlength=10) + np.bincount(yte, minlength=10)).tolist() == [20] * 10
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    with pytest.raises(ValueError, match="no dataset argument 'nope'"):
        mnist1d_arrays(nope=1)


def test_mnist1d_cache_that_is_not_one_is_regenerated(tmp_path):
    from models.data.datasets import _read_mnist1d_cache

    assert _read_mnist1d_cache(tmp_path / "missing.npz") is None
    (tmp_path / "junk.npz").write_bytes(b"not an npz file")
    assert _read_mnist1d_cache(tmp_path / "junk.npz") is None
    x, y = np.zeros((4, 40), np.float32), np.zeros(4, np.int64)
    np.savez(tmp_path / "short.npz", x_train=x[:, :39], y_train=y, x_test=x[:, :39], y_test=y)
    assert _read_mnist1d_cache(tmp_path / "short.npz") is None  # signals of the wrong length
    np.savez(tmp_path / "partial.npz", x_train=x, y_train=y)
    assert _read_mnist1d_cache(tmp_path / "partial.npz") is None
    np.savez(tmp_path / "good.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    got = _read_mnist1d_cache(tmp_path / "good.npz")
    assert got is not None and got[0].shape == (4, 40)


@pytest.mark.slow  # one full generation (~5 s on a busy core) and a 2-epoch MLP
def test_mnist1d_full_dataset_cached_under_root_and_learnable(tmp_path, monkeypatch):
    from models.config import TrainConfig
    from models.training import train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist1d", tmp_path / "nope")
    ds = load_dataset("mnist1d", tmp_path)
    assert ds.x_train.shape == (4000, 40, 1, 1) and ds.x_test.shape == (1000, 40, 1, 1)
    assert (ds.in_channels, ds.image_size, ds.num_classes) == (40, 1, 10)
    # the package's split of its seed-42 draw (5000 = 500 per class, shuffled, first 80 % train)
    assert torch.bincount(ds.y_train).tolist() == [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]
    assert torch.bincount(ds.y_test).tolist() == [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]
    assert abs(float(ds.x_train.mean())) < 1e-5  # normalised with the train statistics
    cached = list((tmp_path / "mnist1d").iterdir())
    assert [p.suffix for p in cached] == [".npz"] and not (tmp_path / "user-cache").exists()
    again = load_dataset("mnist1d", tmp_path)  # from the cache
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)

    torch.set_num_threads(1)
    cfg = TrainConfig(model="mlp", data="mnist1d", epochs=2, lr=3e-3, seed=0, progress=False, val_noise_draws=0)
    res = train(cfg, dataset=ds, log=lambda s: None)
    assert res.test is not None
    # chance is 10 %; the binomial std of a 1000-sample accuracy at 10 % is sqrt(0.1 * 0.9 / 1000) ~ 1 point, so
    # 20 % is ~10 std above chance. Measured: 35-36 % for seeds 0-2 after 2 epochs, so 15 points of margin.
    assert res.test["test_acc"] > 0.20 and res.history[-1]["val_acc"] > 0.20
