"""Neuromorphic event datasets: N-MNIST, DVS128 Gesture and CIFAR10-DVS, read from the
files their publishers distribute by spikingjelly's readers, and integrated into T frames.

    nmnist          root/Train/<0-9>/*.bin, root/Test/<0-9>/*.bin   Train.zip, Test.zip extracted;
                    ATIS .bin files, 40-bit events (spikingjelly.datasets.utils.load_ATIS_bin)
    dvs128_gesture  root/DvsGesture/ (or root itself) with user*.aedat, user*_labels.csv,
                    trials_to_train.txt, trials_to_test.txt   DvsGesture.tar.gz extracted;
                    AEDAT 3.1 (load_aedat_v3); each labels-CSV row is one sample (1,464 in all,
                    as spikingjelly counts them)
    cifar10_dvs     root/<airplane|automobile|...|truck>/*.aedat    the ten class zips extracted;
                    AEDAT 2 (spikingjelly.datasets.cifar10_dvs's reader)

Why spikingjelly and not tonic: spikingjelly is already the SNN library here, so no new
dependency, and it reads the publishers' own formats. tonic 1.7.0 reads N-MNIST's .bin,
but its DVS Gesture and CIFAR10-DVS classes expect tonic's own re-packaged copies (.npy,
AEDAT 4); its AEDAT 2/3 readers for these sensors (`read_dvs_128`, `read_dvs_ibm`) stop
before reading an event (they unpack the header reader's three return values into two:
"too many values to unpack", tried on an AEDAT 3.1 file); and it pulls in librosa and
numba.

Frames: a sample's events are split into T slices of equal event count and each slice
integrated into a 2 x H x W frame of event counts per polarity and pixel
(`integrate_events_by_fixed_frames_number` with split_by="number", spikingjelly's usual
choice for these datasets). `image_size` bins the sensor's pixels (x * S // W), so counts
stay integers. T comes from the model (run.py links model.T to data.T). The pool keeps
counts as uint8, widened to int16 or int32 only when a sample needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import ConfigError, first_line

from .identity import folder_identity


@dataclass(frozen=True)
class EventDataset:
    sensor: tuple[int, int]  # H, W
    classes: tuple[str, ...]
    layout: str  # what data.root must hold, for the error messages


GESTURES = ("hand clap", "right hand wave", "left hand wave", "right arm clockwise", "right arm counter-clockwise",
            "left arm clockwise", "left arm counter-clockwise", "arm roll", "air drums", "air guitar", "other gestures")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

EVENT_DATASETS = {
    "nmnist": EventDataset((34, 34), tuple(str(d) for d in range(10)),
                           "root/Train/<digit>/*.bin and root/Test/<digit>/*.bin (Train.zip and Test.zip, extracted)"),
    "dvs128_gesture": EventDataset((128, 128), GESTURES,
                                   "root/DvsGesture/ with user*.aedat, user*_labels.csv, trials_to_train.txt and "
                                   "trials_to_test.txt (DvsGesture.tar.gz, extracted)"),
    "cifar10_dvs": EventDataset((128, 128), CIFAR10_CLASSES,
                                "root/<class>/*.aedat for the ten classes airplane ... truck (the class zips, extracted)"),
}


def check_image_size(name: str, image_size) -> int:
    """The frame side: the sensor's (null) or a smaller one that the sensor's pixels are binned into."""
    side = EVENT_DATASETS[name].sensor[0]
    size = side if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= side:
        raise ConfigError(f"data.image_size={image_size!r} is not allowed for data.dataset={name!r}; expected null "
                          f"(the sensor's {side} x {side}) or an integer in [1, {side}]")
    return size


def _missing(name: str, root: Path, what: str) -> ConfigError:
    return ConfigError(f"data.root={str(root)!r}: {what}; data.dataset={name!r} expects {EVENT_DATASETS[name].layout}")


def _class_files(name: str, root: Path, folder: Path, classes, pattern: str) -> list[tuple[Path, int]]:
    units = []
    for label, cls in enumerate(classes):
        files = sorted((folder / cls).glob(pattern))
        if not files:
            raise _missing(name, root, f"class folder {folder / cls} holds no {pattern} file (every class needs at "
                                       "least one sample)")
        units += [(f, label) for f in files]
    return units


def list_samples(name: str, root: str | Path) -> tuple[list, list[Path]]:
    """(units, files): the decoding units in pool order, and every file they read.

    A unit is (file, label) for nmnist and cifar10_dvs, and (aedat file, [(label, t_start,
    t_end), ...]) for dvs128_gesture, whose recordings hold several labelled gestures."""
    root = Path(root)
    spec = EVENT_DATASETS[name]
    if not root.is_dir():
        raise _missing(name, root, "not a folder")
    if name == "nmnist":
        splits = [root / s for s in ("Train", "Test") if (root / s).is_dir()]
        if not splits:
            raise _missing(name, root, "no Train/ or Test/ folder")
        units = [u for s in splits for u in _class_files(name, root, s, spec.classes, "*.bin")]
        return units, [f for f, _ in units]
    if name == "cifar10_dvs":
        units = _class_files(name, root, root, spec.classes, "*.aedat")
        return units, [f for f, _ in units]
    folder = root / "DvsGesture" if (root / "DvsGesture").is_dir() else root
    units, files = [], []
    for trials in ("trials_to_train.txt", "trials_to_test.txt"):
        if not (folder / trials).is_file():
            raise _missing(name, root, f"no {trials} in {folder}")
        files.append(folder / trials)
        for line in (folder / trials).read_text().split():
            aedat, csv = folder / line, folder / f"{Path(line).stem}_labels.csv"
            for f in (aedat, csv):
                if not f.is_file():
                    raise _missing(name, root, f"{trials} lists {line}, but {f.name} is missing")
            try:
                rows = np.loadtxt(csv, dtype=np.int64, delimiter=",", skiprows=1, ndmin=2)
                if rows.shape[1] != 3 or not ((rows[:, 0] >= 1) & (rows[:, 0] <= len(spec.classes))).all():
                    raise ValueError("expected rows 'class,startTime_usec,endTime_usec' with class in 1..11")
            except ValueError as err:
                raise ConfigError(f"data.root={str(root)!r}: {csv} is not a DVS128 Gesture labels file "
                                  f"({first_line(err)})") from None
            # The CSV numbers classes 1..11; labels are 0..10.
            units.append((aedat, [(int(c) - 1, int(a), int(b)) for c, a, b in rows]))
            files += [aedat, csv]
    return units, files


def _read(name: str, path: Path) -> dict:
    """A file's events as spikingjelly returns them: {"t", "x", "y", "p"} numpy arrays."""
    if name == "nmnist":
        from spikingjelly.datasets.utils import load_ATIS_bin

        return load_ATIS_bin(path)
    if name == "dvs128_gesture":
        from spikingjelly.datasets.utils import load_aedat_v3

        return load_aedat_v3(path)
    # spikingjelly's CIFAR10-DVS reader is module-private; spikingjelly is pinned to 2.0.0
    # in pyproject.toml, and tests/test_events.py reads written .aedat files through it.
    from spikingjelly.datasets.cifar10_dvs import _load_origin_data

    return _load_origin_data(path)


def to_frames(events: dict, T: int, sensor: tuple[int, int], size: int) -> torch.Tensor:
    """Event counts int32 [T, 2, size, size]: T slices of equal event count, each binned by
    polarity (channel 1: ON) and pixel; the sensor's pixels binned into size x size."""
    from spikingjelly.datasets.utils import integrate_events_by_fixed_frames_number

    H, W = sensor
    x, y = np.asarray(events["x"], dtype=np.int64), np.asarray(events["y"], dtype=np.int64)
    # N-MNIST's format marks time-stamp overflows with y = 240: records that are not events.
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    ev = {"t": np.asarray(events["t"])[inside], "x": x[inside] * size // W, "y": y[inside] * size // H,
          "p": np.asarray(events["p"])[inside]}
    if ev["t"].size == 0:
        return torch.zeros((T, 2, size, size), dtype=torch.int32)
    frames = integrate_events_by_fixed_frames_number(ev, "number", T, size, size)
    return torch.from_numpy(frames.astype(np.int32))


class _Decode(torch.utils.data.Dataset):
    """Unit i as ([(frames, label), ...], None), or (None, error text): errors travel as
    text so that the main process reports the file in one line."""

    def __init__(self, name: str, units: list, T: int, size: int):
        self.name, self.units, self.T, self.size = name, units, T, size

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i):
        path, label = self.units[i]
        sensor = EVENT_DATASETS[self.name].sensor
        try:
            events = _read(self.name, path)
            if self.name != "dvs128_gesture":
                return [(to_frames(events, self.T, sensor, self.size), label)], None
            t = np.asarray(events["t"])
            out = []
            for cls, start, end in label:  # spikingjelly's split: events with start <= t < end
                mask = (t >= start) & (t < end)
                out.append((to_frames({k: np.asarray(v)[mask] for k, v in events.items()}, self.T, sensor,
                                      self.size), cls))
            return out, None
        except Exception as err:  # a truncated or foreign file: numpy and struct raise several types
            return None, f"{path}: {first_line(err)}"


_WIDER = (torch.uint8, torch.int16, torch.int32)


def _as_is(item):
    return item


def load_events(name: str, root: str | Path, T: int, image_size=None, num_workers: int = 0):
    """(frames [M, T, 2, S, S] event counts, labels [M], identity) of every sample under root."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ConfigError(f"data.T={T!r} is not allowed; expected an integer >= 1 (run.py sets it from model.T)")
    size = check_image_size(name, image_size)
    root = Path(root)
    units, files = list_samples(name, root)
    count = sum(len(label) if name == "dvs128_gesture" else 1 for _, label in units)
    frames = torch.zeros((count, T, 2, size, size), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.long)
    loader = torch.utils.data.DataLoader(_Decode(name, units, T, size), batch_size=None, num_workers=num_workers,
                                         collate_fn=_as_is)
    done = 0  # the loader keeps the order (no shuffle)
    for samples, err in loader:
        if err is not None:
            raise ConfigError(f"data.root={str(root)!r}: could not read a {name} file ({err})")
        for f, label in samples:
            while int(f.max()) > torch.iinfo(frames.dtype).max:
                frames = frames.to(_WIDER[_WIDER.index(frames.dtype) + 1])
            frames[done], labels[done] = f, label
            done += 1
    classes = EVENT_DATASETS[name].classes
    identity = folder_identity(root, [f.relative_to(root) for f in files], classes,
                               torch.bincount(labels, minlength=len(classes)).tolist(), image_size=size)
    return frames, labels, identity
