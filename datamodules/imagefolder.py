"""`data.dataset: imagefolder`: any class-per-folder image dataset, read by torchvision's
ImageFolder and decoded once into a uint8 pool at the configured size.

Layouts (`data.root`):
    root/<class>/<image>                       one folder of class folders
    root/train/<class>/<image>, root/val/...   ImageNette, ImageWoof, ImageNet: every split
                                               present of train, val, test is read, in that
                                               order, into the one pool (the plan draws the
                                               population and the audit set from one index
                                               space); the splits must hold the same classes.

Each image is converted to RGB, its shorter side resized to `resize` (antialiased),
and centre-cropped to `image_size` x `image_size`.

Why one decoded pool rather than decoding JPEGs in every epoch: each audited epoch reads
every sample (the target's training half, then the audit set and the population once per
query), and decoding a 426 x 320 JPEG, resizing and cropping it to 128 took 2.0 ms here
(one process; 1.5 ms per image with 2 workers on 2 cores), so ImageNette-320's 13,394
images cost about 27 s of decoding per pass, against once per process for the pool.
Decoded at 128 x 128 the pool takes 13,394 x 3 x 128 x 128 bytes = 658 MB (160: 1.0 GB,
224: 2.0 GB). The price: training augmentation works on the decoded square (padded
random crop and flip), not on the full-resolution image (no RandomResizedCrop).
`data.num_workers` processes decode in parallel.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ConfigError, first_line

from .identity import folder_identity

SPLITS = ("train", "val", "test")
# ImageNet statistics, the usual normalisation for natural photos (ImageNette and
# ImageWoof are ImageNet subsets); applied in the model, so a dropped pixel is black.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_SIZE = 128
_ALLOWED = "a folder of class folders (root/<class>/<image>), or of train/ and val/ (and test/) each holding them"


def split_folders(root: str | Path) -> list[Path]:
    """The folders whose subfolders are the classes: root's train/val/test, or root itself."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data.root={str(root)!r} is not a folder; data.dataset=imagefolder needs {_ALLOWED}")
    return [root / s for s in SPLITS if (root / s).is_dir()] or [root]


def find_classes(root: str | Path) -> list[str]:
    """The class names (sorted folder names, as ImageFolder labels them), the same in every split."""
    from torchvision.datasets.folder import find_classes as tv_find_classes

    found = {}
    for folder in split_folders(root):
        try:
            found[folder] = tv_find_classes(str(folder))[0]
        except FileNotFoundError:
            raise ConfigError(f"data.root={str(root)!r}: {folder} holds no class folder; "
                              f"data.dataset=imagefolder needs {_ALLOWED}") from None
    (first, classes), *rest = found.items()
    for folder, other in rest:
        if other != classes:
            gone, new = sorted(set(classes) - set(other)), sorted(set(other) - set(classes))
            raise ConfigError(f"data.root={str(root)!r}: {folder.name}/ and {first.name}/ hold other classes "
                              f"(only in {first.name}/: {gone[:3]}; only in {folder.name}/: {new[:3]}); "
                              "every split needs the same class folders")
    return classes


def check_sizes(image_size, resize) -> tuple[int, int]:
    """(image_size, resize) with the defaults filled in: 128, and resize = image_size."""
    size = DEFAULT_SIZE if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"data.image_size={image_size!r} is not allowed; expected an integer >= 1 "
                          f"or null ({DEFAULT_SIZE} for imagefolder)")
    resize = size if resize is None else resize
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < size:
        raise ConfigError(f"data.resize={resize!r} is not allowed; expected null (= data.image_size) or an integer "
                          f">= data.image_size={size} (the shorter side before the centre crop)")
    return size, resize


class _Decode(torch.utils.data.Dataset):
    """Item i of an ImageFolder as (uint8 image, label, None), or (None, None, error):
    errors travel as text, so the main process reports the file in one line (an exception
    raised in a DataLoader worker arrives with the worker's traceback in its message)."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i):
        try:
            x, y = self.folder[i]
        except Exception as err:  # PIL raises several types for a truncated or non-image file
            return None, None, f"{self.folder.samples[i][0]}: {first_line(err)}"
        return x, y, None


def image_folders(root: str | Path, transform=None) -> list:
    """One torchvision ImageFolder per split (files listed, nothing decoded), checked: the same
    classes in every split, at least one image in every class folder."""
    from torchvision.datasets import ImageFolder

    find_classes(root)
    folders = []
    for folder in split_folders(root):
        try:
            folders.append(ImageFolder(str(folder), transform=transform, allow_empty=False))
        except FileNotFoundError as err:  # "Found no valid file for the classes ...": an empty class folder
            raise ConfigError(f"data.root={str(root)!r}: {first_line(err)} (in {folder}); every class folder "
                              "needs at least one image") from None
    return folders


def load_imagefolder(root: str | Path, image_size=None, resize=None, num_workers: int = 0):
    """(images uint8 [M, 3, S, S], labels [M], identity) of every split under `root`."""
    from torchvision import transforms

    size, resize = check_sizes(image_size, resize)
    classes = find_classes(root)
    transform = transforms.Compose([
        transforms.Resize(resize, antialias=True), transforms.CenterCrop(size), transforms.PILToTensor()])
    folders = image_folders(root, transform)
    data = torch.utils.data.ConcatDataset([_Decode(f) for f in folders])
    images = torch.empty((len(data), 3, size, size), dtype=torch.uint8)
    labels = torch.empty(len(data), dtype=torch.long)
    loader = torch.utils.data.DataLoader(data, batch_size=32, num_workers=num_workers, collate_fn=list)
    done = 0  # the loader keeps the order (no shuffle): sample `done` is the next one
    for batch in loader:
        for x, y, err in batch:
            if err is not None:
                raise ConfigError(f"data.root={str(root)!r}: could not read an image ({err}); "
                                  "remove or replace the file")
            images[done], labels[done] = x, y  # RGB: ImageFolder's loader converts every image
            done += 1
    files = [Path(path).relative_to(root) for f in folders for path, _ in f.samples]
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    identity = folder_identity(root, files, classes, counts, contents=True, image_size=size, resize=resize)
    return images, labels, identity
