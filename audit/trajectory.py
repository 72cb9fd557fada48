"""Trajectories: a model's rescaled logits on the audit set and the population at each
validation epoch, recorded while it trains (one plain inference pass per epoch; the
target's comes from the audit's own pass) and never recomputed.

    model_<k>/trajectory/epoch_<e>.pt     {"audit": [N] float32, "population": [Z] float32}
    model_<k>/trajectory/epoch_<e>.json   plan, epoch, sizes, tensors' hash
    model_<k>/trajectory/index.json       the checkpoint the model finished with (its sha256)

An epoch's entry is used only when its JSON matches the plan and its tensors their hash;
a finished model's trajectory only when index.json names its current checkpoint (the one
done.json recorded), so a retrained model's old epochs are never mixed in."""

from __future__ import annotations

import json

import torch

from core.rundir import atomic_write, checkpoint_path, file_sha256, tensors_sha256, trajectory_dir, write_json

from .signals import compute_signals


def _key(dm, epoch: int) -> dict:
    return {"plan": dm.plan.fingerprint, "epoch": int(epoch), "strategy": "plain",
            "audit_size": int(dm.membership.shape[1]), "population_size": int(len(dm.population_indices))}


def record(dm, index: int, epoch: int, model=None, signals: dict | None = None, ranks=None) -> None:
    """Record model `index`'s rescaled logits at `epoch`: from `signals` (plain queries on the
    whole audit set) when given, else one plain pass of `model`. An epoch already recorded
    is kept. Under DDP every rank must call it (the pass is sharded); rank 0 writes."""
    folder = trajectory_dir(dm.run_dir, index)
    if read_epoch(dm, index, epoch) is not None:
        return
    if signals is None:
        signals = compute_signals(model, dm, "plain", device=model.device, ranks=ranks)
        if signals is None:  # a rank other than 0
            return
    tensors = {"audit": signals["audit/rescaled_logit"].float().mean(0),
               "population": signals["population/rescaled_logit"].float().mean(0)}
    atomic_write(folder / f"epoch_{epoch}.pt", lambda p: torch.save(tensors, p))
    write_json(folder / f"epoch_{epoch}.json", {**_key(dm, epoch), "tensors_sha256": tensors_sha256(tensors)})


def finish(dm, index: int) -> None:
    """Bind the recorded epochs to the checkpoint model `index` finished with."""
    ckpt = checkpoint_path(dm.run_dir, index)
    if ckpt.is_file() and trajectory_dir(dm.run_dir, index).is_dir():
        write_json(trajectory_dir(dm.run_dir, index) / "index.json", {"checkpoint_sha256": file_sha256(ckpt)})


def read_epoch(dm, index: int, epoch: int) -> dict | None:
    folder = trajectory_dir(dm.run_dir, index)
    data, meta = folder / f"epoch_{epoch}.pt", folder / f"epoch_{epoch}.json"
    if not (data.is_file() and meta.is_file()):
        return None
    try:
        key = json.loads(meta.read_text())
        recorded = key.pop("tensors_sha256")
        tensors = torch.load(data, map_location="cpu", weights_only=True)
        if key != _key(dm, epoch) or tensors_sha256(tensors) != recorded:
            return None
    except Exception:  # damaged: as if not recorded
        return None
    return tensors


def recorded_epochs(dm, index: int, checkpoint_sha256: str | None = None) -> list[int]:
    """The epochs recorded for model `index`; with `checkpoint_sha256`, none unless index.json
    names that checkpoint."""
    folder = trajectory_dir(dm.run_dir, index)
    if checkpoint_sha256 is not None:
        try:
            if json.loads((folder / "index.json").read_text()).get("checkpoint_sha256") != checkpoint_sha256:
                return []
        except Exception:
            return []
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob("epoch_*.json"))
