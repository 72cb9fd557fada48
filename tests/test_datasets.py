"""Dataset readers on small files the tests write (no network here)."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from datamodules import load_pool
from datamodules.datasets import DEBIAN_FASHION_MNIST


def _idx(path: Path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, n_train=20, n_test=10):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))


def _write_cifar(root: Path, n=6, classes=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, classes, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(classes)]}))


def test_mnist_reader_on_written_files(tmp_path):
    _write_mnist(tmp_path, "MNIST")
    pool = load_pool("mnist", tmp_path)
    assert pool.images.shape == (30, 1, 28, 28) and pool.images.dtype == torch.uint8
    assert pool.labels.shape == (30,)


def test_cifar10_reader_on_written_files(tmp_path):
    _write_cifar(tmp_path)
    pool = load_pool("cifar10", tmp_path)
    assert pool.images.shape == (36, 3, 32, 32) and pool.images.dtype == torch.uint8


def test_corrupt_cifar_file_is_an_error_naming_the_folder(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="cifar-10-batches-py"):
        load_pool("cifar10", tmp_path)


@pytest.mark.parametrize("name, expected", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"),
                                            ("cifar100", "cifar-100-python")])
def test_missing_files_name_what_is_expected_and_where(tmp_path, name, expected):
    with pytest.raises(ConfigError) as err:
        load_pool(name, tmp_path / "nothing")
    msg = str(err.value)
    assert expected in msg and "--data.download true" in msg and "\n" not in msg


def test_cifar_training_augmentation_keeps_shape():
    from datamodules.datasets import crop_flip

    x = torch.rand(3, 32, 32)
    out = crop_flip(32)(x)
    assert out.shape == x.shape


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
                    reason="the Fashion-MNIST files are not installed on this machine; `apt-get install "
                           "dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist (.ci/run does)")
def test_fashion_mnist_offline_from_debian_files(tmp_path):
    pool = load_pool("fashion_mnist", tmp_path)
    assert pool.images.shape == (70_000, 1, 28, 28)
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
