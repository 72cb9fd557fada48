"""The data pools: every dataset loaded once into memory as one tensor pool.

A pool is the train and test splits of a dataset concatenated (train first), so
that the membership plan can draw its population hold-out and its audit set from
one index space. Images are kept as uint8 (CIFAR-10: 60k x 3x32x32 = 184 MB) and
scaled to [0, 1] floats per sample; normalisation lives in the model, so that an
input-dropout query zeroes a pixel to black, not to the dataset mean.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import ConfigError
from core.seeds import derive_seed

# name -> (input shape, classes, normalisation mean, std, random crop+flip in training)
DATASETS = {
    "digits": ((1, 8, 8), 10, (0.5,), (0.5,), False),
    "mnist": ((1, 28, 28), 10, (0.1307,), (0.3081,), False),
    "fashion_mnist": ((1, 28, 28), 10, (0.2860,), (0.3530,), False),
    "cifar10": ((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": ((3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
}

# Debian's `dataset-fashion-mnist` package ships the gzipped IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_EXPECTED_FILES = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashion_mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "cifar-100-python/{train,test,meta}",
}


@dataclass
class Pool:
    images: torch.Tensor  # uint8 [M, C, H, W], or float in [0, 1] for digits
    labels: torch.Tensor  # int64 [M]

    def __len__(self) -> int:
        return int(self.labels.numel())


def _digits() -> Pool:
    from sklearn.datasets import load_digits

    d = load_digits()  # 1,797 real 8x8 digits shipped inside scikit-learn, values 0..16
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return Pool(images, torch.tensor(d.target, dtype=torch.long))


def _stage_debian_fashion_mnist(root: Path) -> None:
    """Decompress Debian's Fashion-MNIST into torchvision's expected `raw/` folder."""
    raw = root / "FashionMNIST" / "raw"
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if all((raw / n).exists() for n in names) or not all((DEBIAN_FASHION_MNIST / f"{n}.gz").exists() for n in names):
        return
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        tmp = raw / f".{n}.tmp"
        with gzip.open(DEBIAN_FASHION_MNIST / f"{n}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(raw / n)


def _present_files_only(cls):
    """torchvision's CIFAR reader with its md5 check replaced by a presence check.

    The md5 check stays on for downloads; for files already on disk (a mirror, a
    cluster's shared copy, or the small files our tests write) a damaged file still
    fails, at unpickling, and is reported by `_torchvision` with its folder."""

    class Reader(cls):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:  # the class names only; same file, no md5
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Reader


def _torchvision(name: str, root: Path, download: bool) -> Pool:
    from torchvision import datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    if name.startswith("cifar") and not download:
        cls = _present_files_only(cls)
    if name == "fashion_mnist" and not download:
        _stage_debian_fashion_mnist(root)
    parts = []
    try:
        for train in (True, False):
            parts.append(cls(str(root), train=train, download=download))
    except Exception as err:  # torchvision raises RuntimeError for missing/corrupt files, others for bad bytes
        hint = "set --data.download true on a machine with internet, or point --data.root at a folder holding them"
        if name == "fashion_mnist":
            hint += f" (offline: `apt-get install dataset-fashion-mnist` provides {DEBIAN_FASHION_MNIST})"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"data.dataset={name!r}: could not read {root / _EXPECTED_FILES[name]} ({first}); {hint}"
        ) from None
    images, labels = [], []
    for ds in parts:
        data = torch.as_tensor(ds.data)
        if data.ndim == 3:  # MNIST-style [M, H, W]
            data = data.unsqueeze(1)
        else:  # CIFAR numpy [M, H, W, C]
            data = data.permute(0, 3, 1, 2)
        images.append(data.contiguous())
        labels.append(torch.as_tensor(ds.targets, dtype=torch.long))
    return Pool(torch.cat(images), torch.cat(labels))


def load_pool(name: str, root: str | Path = "data", download: bool = False) -> Pool:
    if name not in DATASETS:
        raise ConfigError(f"data.dataset={name!r} is not allowed; choose one of: {', '.join(DATASETS)}")
    if name == "digits":
        return _digits()
    return _torchvision(name, Path(root), download)


class IndexedImages(torch.utils.data.Dataset):
    """pool[indices[i]] as (image in [0, 1], label, i): `i` is the sample's position in
    this set (audit or population), which the attacks use to put signals in order and
    to de-duplicate what DistributedSampler repeats.

    An item may be asked for as (i, epoch) (datamodules.membership.EpochShuffle does): then
    its augmentation is drawn from a generator seeded by (augment_seed, epoch, sample), so it
    does not depend on the order, the batch or the worker that reads it, and a resumed epoch
    sees the same augmented images as an uninterrupted one."""

    def __init__(self, pool: Pool, indices: torch.Tensor, positions: torch.Tensor | None = None, augment=None,
                 augment_seed: int | None = None):
        self.pool = pool
        self.indices = indices
        self.positions = torch.arange(len(indices)) if positions is None else positions
        self.augment = augment
        self.augment_seed = augment_seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, None)
        j = int(self.indices[i])
        x = self.pool.images[j]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        if self.augment is not None:
            if epoch is None or self.augment_seed is None:
                x = self.augment(x)
            else:  # torchvision's transforms draw from the global generator: fork it, seeded per sample
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(self.augment_seed, epoch, j))
                    x = self.augment(x)
        return x, self.pool.labels[j], self.positions[i]


def crop_flip(size: int):
    """The CIFAR training recipe: 4-pixel padded random crop plus horizontal flip."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()])
