"""Small datasets in their real on-disk formats, written by the tests (nothing can be
downloaded here) and read back by the readers the tool uses: torchvision's ImageFolder,
and spikingjelly's N-MNIST (.bin), DVS128 Gesture (AEDAT 3.1 + labels CSV) and
CIFAR10-DVS (AEDAT 2) readers."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from datamodules.events import CIFAR10_CLASSES


# -- images -----------------------------------------------------------------------------------
def write_image_folder(root: Path, layout: dict[str, dict[str, int]], size=(40, 30), fmt: str = "PNG") -> list:
    """layout {split or "": {class: number of images}}; image k of a class is one solid
    colour. Returns [(relative path, colour)] in the order ImageFolder lists them."""
    from PIL import Image

    written = []
    for split, classes in layout.items():
        for c, (cls, n) in enumerate(sorted(classes.items())):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                colour = (40 * c + 10, (7 * k + 3) % 256, 200 - 20 * c)
                path = folder / f"img_{k:03d}.{fmt.lower()}"
                Image.new("RGB", size, colour).save(path, fmt)
                written.append((path.relative_to(root), colour))
    return written


# -- N-MNIST: ATIS .bin, 40 bits per event ------------------------------------------------------
def nmnist_bytes(events) -> bytes:
    """events [(x, y, p, t)]: bits 39-32 x, 31-24 y, 23 polarity, 22-0 time stamp (us)."""
    out = bytearray()
    for x, y, p, t in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


def random_events(rng, n: int, side: int, t_max: int = 300_000):
    t = np.sort(rng.integers(0, t_max, n))
    return [(int(rng.integers(0, side)), int(rng.integers(0, side)), int(rng.integers(0, 2)), int(tt)) for tt in t]


def write_nmnist(root: Path, per_class=(1, 1), events: int = 30, seed: int = 0) -> dict[Path, list]:
    """root/Train/<d>/*.bin and root/Test/<d>/*.bin; {relative path: events} in pool order."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in zip(("Train", "Test"), per_class):
        for d in range(10 if n else 0):
            folder = root / split / str(d)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                ev = random_events(rng, events, 34)
                path = folder / f"{k:05d}.bin"
                path.write_bytes(nmnist_bytes(ev))
                written[path.relative_to(root)] = ev
    return written


# -- DVS128 Gesture: AEDAT 3.1 ------------------------------------------------------------------
def aedat31_bytes(events) -> bytes:
    """An AEDAT 3.1 file: the text header, one special-event packet (type 0, as cAER
    writes at the start of a recording), then one polarity packet (type 1) holding
    events [(x, y, p, t)]: data = x << 17 | y << 2 | p << 1 | valid, then the time stamp."""
    header = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"

    def packet(kind: int, payload: list[tuple[int, int]]) -> bytes:
        n = len(payload)  # type, source, size, ts offset, ts overflow, capacity, number, valid
        head = struct.pack("<HHIIIIII", kind, 1, 8, 4, 0, n, n, n)
        return head + b"".join(struct.pack("<II", a, t) for a, t in payload)

    special = packet(0, [(0, 0)])  # a time-stamp reset
    polarity = packet(1, [((x << 17) | (y << 2) | (p << 1) | 1, t) for x, y, p, t in events])
    return header + special + polarity


def write_gesture(root: Path, recordings: dict[str, tuple[str, list, list]]) -> None:
    """recordings {name: (split "train"/"test", events, [(class 1..11, start, end)])} under root/DvsGesture/."""
    folder = root / "DvsGesture"
    folder.mkdir(parents=True, exist_ok=True)
    trials = {"train": [], "test": []}
    for name, (split, events, rows) in recordings.items():
        (folder / f"{name}.aedat").write_bytes(aedat31_bytes(events))
        lines = ["class,startTime_usec,endTime_usec"] + [f"{c},{a},{b}" for c, a, b in rows]
        (folder / f"{name}_labels.csv").write_text("\n".join(lines) + "\n")
        trials[split].append(f"{name}.aedat")
    for split, names in trials.items():
        (folder / f"trials_to_{split}.txt").write_text("".join(f"{n}\n" for n in names))


# -- CIFAR10-DVS: AEDAT 2 -----------------------------------------------------------------------
def aedat2_bytes(events) -> bytes:
    """An AEDAT 2.0 file of events [(x, y, p, t)] as spikingjelly's CIFAR10-DVS reader returns
    them: big-endian (address, time stamp) pairs after the text header. The sensor's raw
    address holds x_raw << 1, y_raw << 8 and the polarity bit, with x = 127 - y_raw,
    y = 127 - x_raw, p = 1 - raw polarity."""
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# created by jAER\r\n"
    body = bytearray()
    for x, y, p, t in events:
        address = ((127 - x) << 8) | ((127 - y) << 1) | (1 - p)
        body += struct.pack(">II", address, t)
    return header + bytes(body)


def write_cifar10_dvs(root: Path, per_class: int = 1, events: int = 40, seed: int = 0) -> dict[Path, list]:
    rng = np.random.default_rng(seed)
    written = {}
    for cls in CIFAR10_CLASSES:
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            ev = random_events(rng, events, 128)
            path = folder / f"cifar10_{cls}_{k}.aedat"
            path.write_bytes(aedat2_bytes(ev))
            written[path.relative_to(root)] = ev
    return written


def expected_frames(events, T: int, side: int, sensor: int) -> np.ndarray:
    """What integrating `events` into T frames of equal event count means, re-stated:
    frame i holds events [i * (N // T), (i + 1) * (N // T)) (the last one also the rest),
    each counted at [p, y * side // sensor, x * side // sensor]."""
    frames = np.zeros((T, 2, side, side), dtype=np.int64)
    n = len(events)
    per = n // T
    for i, (x, y, p, _) in enumerate(events):
        f = min(i // per, T - 1) if per else T - 1
        frames[f, p, y * side // sensor, x * side // sensor] += 1
    return frames
