"""Dataset readers on small files written by the test (torchvision layout), and clear errors for missing ones."""

import gzip
import pickle

import numpy as np
import pytest

from models.data import load_dataset
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
