"""The ranks of one audit under DDP: each rank queries its shard of the audit set and of
the population (a DistributedSampler without shuffling), rank 0 gathers the shards and
keeps every sample exactly once (the sampler pads the last shards by repeating samples).
In a single process every collective here is a no-op."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler


class Ranks:
    """The processes that share one audit: the ranks of a Lightning strategy (DDP), or
    this process alone (``Ranks()``). Collectives are no-ops for a single process."""

    def __init__(self, strategy=None):
        self.strategy = strategy
        self.world_size = int(getattr(strategy, "world_size", 1) or 1) if strategy is not None else 1
        self.rank = int(getattr(strategy, "global_rank", 0) or 0) if strategy is not None else 0
        if self.world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(f"world size {self.world_size} but no torch.distributed process group: "
                               "run the audit inside a Lightning entrypoint (fit, validate) so the ranks exist")

    @classmethod
    def of(cls, trainer) -> "Ranks":
        return cls(getattr(trainer, "strategy", None))

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        return self.strategy.broadcast(obj, src=0) if self.sharded else obj

    def barrier(self) -> None:
        if self.sharded:
            self.strategy.barrier()

    def gather(self, obj) -> list | None:
        """Every rank's `obj` in rank order, on rank 0; None on the others."""
        if not self.sharded:
            return [obj]
        out = [None] * self.world_size if self.is_zero else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """`loader` restricted to this rank's shard: DistributedSampler without shuffling, which
    pads the last shards by repeating samples from the start so that every rank has as many."""
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank, shuffle=False)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def pack_shard(signals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One rank's ``query_signals(..., allow_missing=True)`` result, cut down to the samples it
    saw: ``index`` [n] (their positions, ascending) and every signal's last dimension at those."""
    seen = signals["seen"]
    out = {"index": seen.nonzero().squeeze(1)}
    for key, value in signals.items():
        if key != "seen":
            out[key] = value[..., seen]
    return out


def merge_shards(shards: list[dict[str, torch.Tensor]], num_samples: int) -> dict[str, torch.Tensor]:
    """The full signals [..., num_samples] from the ranks' packed shards (`pack_shard`), in sample
    order, each sample taken exactly once: a sample that several ranks saw (DistributedSampler's
    padding repeats samples) is taken from the lowest rank. A sample no rank saw is an error."""
    if not shards:
        raise ValueError("no shards to merge")
    filled = torch.zeros(num_samples, dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        index = shard["index"].cpu().long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_samples):
            raise ValueError(f"shard holds sample indices outside [0, {num_samples - 1}]")
        new = ~filled[index]
        take, rows = index[new], new.nonzero().squeeze(1)
        for key, value in shard.items():
            if key == "index":
                continue
            value = value.cpu()
            if key not in out:
                fill = float("nan") if value.is_floating_point() else (False if value.dtype == torch.bool else -1)
                out[key] = torch.full((*value.shape[:-1], num_samples), fill, dtype=value.dtype)
            out[key][..., take] = value[..., rows]
        filled[take] = True
    if not bool(filled.all()):
        missing = (~filled).nonzero().squeeze(1)
        raise RuntimeError(f"{missing.numel()} of {num_samples} samples were queried by no rank "
                           f"(first: {missing[:5].tolist()})")
    return out
