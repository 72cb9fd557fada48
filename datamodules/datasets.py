"""The data pools: every dataset loaded once into memory as one tensor pool.

A pool is the train and test splits of a dataset concatenated (train first), so
that the membership plan can draw its population hold-out and its audit set from
one index space. Images are kept as uint8 (CIFAR-10: 60k x 3x32x32 = 184 MB) and
scaled to [0, 1] floats per sample; normalisation lives in the model, so that an
input-dropout query zeroes a pixel to black, not to the dataset mean.

Besides the built-in datasets below: `imagefolder` (any class-per-folder image
dataset, imagefolder.py) and the event datasets `nmnist`, `dvs128_gesture`,
`cifar10_dvs` (events.py), whose samples are T frames of event counts [T, 2, H, W],
given to the model as counts (never scaled or normalised).
"""

from __future__ import annotations

import gzip
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import ConfigError, check_choice
from core.seeds import derive_seed

from .events import EVENT_DATASETS, check_image_size, list_samples, load_events
from .imagefolder import (MEAN as IMAGENET_MEAN, STD as IMAGENET_STD, check_sizes, find_classes, image_folders,
                          load_imagefolder)

# name -> (input shape, classes, normalisation mean, std, random crop+flip in training)
DATASETS = {
    "digits": ((1, 8, 8), 10, (0.5,), (0.5,), False),
    "mnist": ((1, 28, 28), 10, (0.1307,), (0.3081,), False),
    "fashion_mnist": ((1, 28, 28), 10, (0.2860,), (0.3530,), False),
    "cifar10": ((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": ((3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
}

# Every value of data.dataset.
NAMES = (*DATASETS, "imagefolder", *EVENT_DATASETS)

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
    images: torch.Tensor  # uint8 [M, C, H, W], float in [0, 1] for digits, or event counts [M, T, 2, H, W]
    labels: torch.Tensor  # int64 [M]
    counts: bool = False  # images are event counts: given to the model as they are, not scaled by 1/255
    identity: dict | None = None  # a folder dataset's identity, for the plan (identity.py)

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass(frozen=True)
class Info:
    """What the model needs to know of a dataset before its pool is loaded."""

    input_shape: tuple[int, int, int]  # C, H, W of an image or of one event frame
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # the default of data.augment
    events: bool  # samples are T event frames [T, 2, H, W]


def dataset_info(name: str, root: str | Path = "data", image_size=None, resize=None, download: bool = False) -> Info:
    """The shape, classes and normalisation of a dataset, checking its data keys; for
    imagefolder the class folders under root are listed (not read)."""
    check_choice("data.dataset", name, NAMES)
    if download and name not in DATASETS:
        raise ConfigError(f"data.download={download!r} is not allowed with data.dataset={name!r}; only the torchvision "
                          f"datasets ({', '.join(n for n in DATASETS if n != 'digits')}) download; get {name} by hand "
                          "(docs/datasets.md) and set data.download false")
    if name in DATASETS:
        for key, value in (("image_size", image_size), ("resize", resize)):
            if value is not None:
                raise ConfigError(f"data.{key}={value!r} is not allowed with data.dataset={name!r}, which keeps its "
                                  f"own size; it applies to imagefolder and the event datasets: set null")
        shape, classes, mean, std, augment = DATASETS[name]
        return Info(shape, classes, mean, std, augment, False)
    if name == "imagefolder":
        size, _ = check_sizes(image_size, resize)
        classes = find_classes(root)
        if len(classes) < 2:
            raise ConfigError(f"data.root={str(root)!r} holds {len(classes)} class folder ({classes}); "
                              "data.dataset=imagefolder needs at least 2")
        return Info((3, size, size), len(classes), IMAGENET_MEAN, IMAGENET_STD, True, False)
    if resize is not None:
        raise ConfigError(f"data.resize={resize!r} is not allowed with data.dataset={name!r}; it applies to "
                          "imagefolder only (event frames are binned with data.image_size): set null")
    size = check_image_size(name, image_size)
    # Events are counts, not intensities: mean 0 and std 1 leave them as they are (the
    # model does not normalise frames anyway); no flip by default, because DVS128
    # Gesture tells left-hand from right-hand gestures.
    return Info((2, size, size), len(EVENT_DATASETS[name].classes), (0.0, 0.0), (1.0, 1.0), False, True)


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


def load_pool(name: str, root: str | Path = "data", download: bool = False, image_size=None, resize=None,
              T: int = 4, num_workers: int = 0) -> Pool:
    """The pool of a dataset. image_size and resize: imagefolder's square side and the shorter
    side before the crop; an event dataset's frame side. T: the event frames per sample.
    num_workers: processes decoding imagefolder's images or the event files."""
    dataset_info(name, root, image_size, resize, download)
    if name == "digits":
        return _digits()
    if name == "imagefolder":
        images, labels, identity = load_imagefolder(root, image_size, resize, num_workers)
        return Pool(images, labels, identity=identity)
    if name in EVENT_DATASETS:
        frames, labels, identity = load_events(name, root, T, image_size, num_workers)
        return Pool(frames, labels, counts=True, identity=identity)
    return _torchvision(name, Path(root), download)


def check_readable(name: str, root: str | Path = "data", download: bool = False, image_size=None, resize=None) -> None:
    """That the dataset can be read under root (ConfigError otherwise), as cheaply as it can be
    told: imagefolder's and the event datasets' files are listed, not decoded (decoding
    ImageNette-320 takes about 27 s on one core); a torchvision dataset is loaded."""
    dataset_info(name, root, image_size, resize, download)
    if name == "imagefolder":
        image_folders(root)
    elif name in EVENT_DATASETS:
        list_samples(name, root)
    else:
        load_pool(name, root, download)


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
        if self.pool.counts:
            x = x.float()  # event counts stay counts
        elif x.dtype == torch.uint8:
            x = x.float() / 255.0
        if self.augment is not None:
            if epoch is None or self.augment_seed is None:
                x = self.augment(x)
            else:  # torchvision's transforms draw from the global generator: fork it, seeded per sample
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(self.augment_seed, epoch, j))
                    x = self.augment(x)
        return x, self.pool.labels[j], self.positions[i]


def crop_flip(size: int):
    """The CIFAR training recipe: padded random crop plus horizontal flip. The padding is
    size / 8: CIFAR's 4 pixels at 32, 16 at imagefolder's default 128."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(size, padding=max(4, size // 8)), v2.RandomHorizontalFlip()])
