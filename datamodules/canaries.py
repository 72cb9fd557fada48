"""Canaries: samples added to the target's training set, each independently with probability 1/2,
for the one-run audit of Steinke, Nasr and Jagielski (NeurIPS 2023).

`data.canaries: {count: m, kind: mislabel | noise}` (null: none):

- `mislabel`: m images of the data pool, taken out of the population and the audit set (no model
  sees them otherwise), each with a fixed wrong label (its true label plus a random offset in
  1..C-1, modulo C).
- `noise`: m fixed random-pixel images (uniform intensities; for event data, 0/1 counts), each
  with a random label. It needs no labelled data.

The plan (datamodules/plan.py) draws them once, with the rest of the plan, and keeps the canary
images' pool positions (mislabel) or the images themselves (noise), their labels and their
inclusion bits under the plan's hash. Only the target (model 0) trains on its included canaries;
references never see a canary, and the audit set and the population, from which every accuracy
is computed, hold none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import ConfigError, check_choice, check_int
from core.seeds import derive_seed

from .datasets import IndexedImages, Pool

KINDS = ("mislabel", "noise")
SHAPE = "{count: m, kind: mislabel | noise}"


def check_canaries(value) -> dict | None:
    """data.canaries as {"count": m, "kind": kind}, or None; a bad value is a one-line ConfigError."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"data.canaries={value!r} is not allowed; expected null (no canaries) or a mapping {SHAPE}")
    unknown = sorted(str(k) for k in set(value) - {"count", "kind"})
    if unknown:
        raise ConfigError(f"data.canaries has unknown key(s) {unknown}; expected a mapping {SHAPE}")
    if "count" not in value or "kind" not in value:
        raise ConfigError(f"data.canaries={dict(value)!r} is missing "
                          f"{'count' if 'count' not in value else 'kind'}; expected a mapping {SHAPE}")
    check_int("data.canaries.count", value["count"], 2, what=" (the one-run bound needs at least 2 canaries)")
    check_choice("data.canaries.kind", value["kind"], KINDS)
    return {"count": int(value["count"]), "kind": value["kind"]}


@dataclass
class Canaries:
    kind: str
    labels: torch.Tensor  # int64 [m], the label each canary is trained and scored with
    included: torch.Tensor  # bool [m], in the target's training set
    indices: torch.Tensor | None = None  # int64 [m], pool positions of a mislabel canary's image
    images: torch.Tensor | None = None  # [m, ...] in the pool's dtype, a noise canary's image

    @property
    def count(self) -> int:
        return int(self.labels.numel())

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"canary_labels": self.labels, "canary_included": self.included}
        if self.indices is not None:
            out["canary_indices"] = self.indices
        if self.images is not None:
            out["canary_images"] = self.images
        return out

    @classmethod
    def from_tensors(cls, kind: str, tensors: dict) -> "Canaries":
        return cls(kind, tensors["canary_labels"], tensors["canary_included"], tensors.get("canary_indices"),
                   tensors.get("canary_images"))


def draw_canaries(spec: dict, seed: int, pool_indices: torch.Tensor | None, pool_labels: torch.Tensor,
                  num_classes: int, sample: torch.Tensor) -> Canaries:
    """The canaries of `spec` from their own generator (derived from the plan's seed). mislabel:
    `pool_indices` are the m pool positions set aside for them; noise: `sample` (one pool item)
    gives the shape and dtype of the images."""
    m, kind = spec["count"], spec["kind"]
    g = torch.Generator().manual_seed(derive_seed(seed, "canaries"))
    included = torch.rand(m, generator=g) < 0.5
    if kind == "mislabel":
        if num_classes < 2:
            raise ConfigError("data.canaries.kind='mislabel' needs at least 2 classes; use kind=noise")
        offset = torch.randint(1, num_classes, (m,), generator=g)
        labels = (pool_labels[pool_indices] + offset) % num_classes
        return Canaries(kind, labels, included, indices=pool_indices)
    labels = torch.randint(0, num_classes, (m,), generator=g)
    shape = (m, *sample.shape)
    if sample.dtype == torch.uint8:
        images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    elif sample.is_floating_point():
        images = torch.rand(shape, generator=g).to(sample.dtype)
    else:  # event counts: a random 0/1 event in every bin
        images = torch.randint(0, 2, shape, generator=g).to(sample.dtype)
    return Canaries(kind, labels, included, images=images)


def canary_images(canaries: Canaries, pool: Pool, only_included: bool = False) -> IndexedImages:
    """The canaries as a dataset of (image, canary label, canary position), read like pool items."""
    images = canaries.images if canaries.images is not None else pool.images[canaries.indices]
    keep = canaries.included.nonzero().squeeze(1) if only_included else torch.arange(canaries.count)
    return IndexedImages(Pool(images, canaries.labels, counts=pool.counts), keep, keep)


class Joined(torch.utils.data.Dataset):
    """Datasets one after another, read by position or by (position, epoch) as IndexedImages is
    (datamodules.membership.EpochShuffle asks for the latter)."""

    def __init__(self, *parts):
        self.parts = parts
        self.sizes = [len(p) for p in parts]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, None)
        for part, size in zip(self.parts, self.sizes):
            if i < size:
                return part[i] if epoch is None else part[(i, epoch)]
            i -= size
        raise IndexError(key)
