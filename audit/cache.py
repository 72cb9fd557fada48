"""Per-model attack signals, computed once per (checkpoint, query strategy, latency, mask
seed) and cached in the model's directory, whether the model serves as target or reference.

    model_<k>/signals/<strategy>__T<t>__seed<s>.pt    tensors only (weights_only load)
    model_<k>/signals/<strategy>__T<t>__seed<s>.json  checkpoint sha256, plan, precision, sizes

A cache entry is used only when its JSON matches the checkpoint's content hash, the
plan's fingerprint, the model index and membership row the checkpoint was trained as, the
strategy, the latency, the mask seed and the training precision, and its tensors match the
hash recorded in the JSON and have the shapes and types the key implies; anything else is
recomputed, with a warning when the entry was damaged. A checkpoint that no longer matches
the hash its done.json recorded is an error, never audited, and so is a model folder whose
done.json says it holds another model (folders swapped by hand): that is checked on every
call, hit or miss, because the cache travels with the folder and matches its own checkpoint. Signals, not logits, are kept (audit/signals.py): 9 MB per model at
N = 60,000 and Q = 30, so a K = 64 study holds about 0.6 GB of attack inputs.

A direct-encoded SNN's missing entries for several latencies are filled from one run
at T = max(missing latencies), each under its own key.

The SNN-native levels (attacks/hooks.py: steps, spikes, membrane) an audit asks for get an
entry each beside the latency's, under the same key plus the level:

    model_<k>/signals/<strategy>__T<t>__seed<s>__<level>.pt / .json

holding "<split>/<level>" of both splits, or, for a level the model does not have (an ANN's
steps), no tensors and the reason in the JSON's `unavailable`. A latency whose entry or any
asked level's entry is missing is computed in one pass, everything asked at once, and all
its entries are written from that pass.
"""

from __future__ import annotations

import json
import warnings

import torch

from attacks import parse_query
from core.errors import ConfigError, first_line
from core.rundir import (atomic_write, check_model_folder, checkpoint_path, file_sha256, read_done, retrain_command,
                         signals_dir, tensors_sha256, verify_checkpoint, write_json)
from lightning_modules import Classifier

from .distributed import Ranks
from .signals import compute_signals, compute_signals_by_latency, one_pass_latencies, stored, with_probability


def cache_key(strategy, T: int | None, seed: int) -> str:
    return f"{parse_query(strategy).name}__T{T if T is not None else 'ann'}__seed{seed}"


def entry_key(checkpoint_sha: str | None, datamodule, strategy, T: int | None, seed: int, index: int,
              precision: str | None) -> dict:
    """What a cache entry was computed for: the checkpoint's bytes, the plan, the model index
    and its membership row (what the checkpoint was trained as), the query strategy, the
    latency, the mask seed, the sizes, and the precision the model was trained in (its
    done.json `precision`; the signals themselves are always float32)."""
    row = datamodule.membership[index]
    return {"checkpoint_sha256": checkpoint_sha, "plan": datamodule.plan.fingerprint, "model_index": index,
            "membership_sha256": tensors_sha256({"row": row}), "strategy": strategy.name,
            "T": T, "seed": seed, "precision": precision, "audit_size": int(datamodule.membership.shape[1]),
            "population_size": int(len(datamodule.population_indices))}


def level_paths(paths: tuple, level: str) -> tuple:
    """A level's entry paths beside a latency's entry `paths`."""
    return tuple(p.with_name(f"{p.stem}__{level}{p.suffix}") for p in paths)


def write_entry(paths: tuple, key: dict, tensors: dict, levels=()) -> None:
    """The latency's entry and one per level of `levels` (its tensors, or its reason)."""
    for level in levels:
        why = (tensors.get("unavailable") or {}).get(level)
        _write(level_paths(paths, level), {**key, "level": level, **({"unavailable": why} if why else {})},
               {} if why else stored(tensors, level))
    _write(paths, key, stored(tensors))


def _write(paths: tuple, key: dict, tensors: dict) -> None:
    data_path, meta_path = paths
    atomic_write(data_path, lambda p: torch.save(tensors, p))
    try:
        write_json(meta_path, {**key, "tensors_sha256": tensors_sha256(tensors)})  # last: marks a complete entry
    except BaseException:
        data_path.unlink(missing_ok=True)  # no entry stays half-made (a kill here leaves one: read as missing)
        raise


def store_signals(run_dir, index: int, datamodule, strategy, T: int | None, seed: int, tensors: dict,
                  precision: str | None, levels=()) -> None:
    """Put signals computed elsewhere (the training callback's last audit of its target, on the
    whole audit set) into model `index`'s cache, keyed by its checkpoint as it is now and the
    trainer's `precision` (what its done.json will record); with the entries of `levels`."""
    strategy = parse_query(strategy)
    ckpt = checkpoint_path(run_dir, index)
    if not ckpt.is_file():
        return
    directory = signals_dir(run_dir, index)
    name = cache_key(strategy, T, seed)
    write_entry((directory / f"{name}.pt", directory / f"{name}.json"),
                entry_key(file_sha256(ckpt), datamodule, strategy, T, seed, index, precision), tensors, levels)


def cached_signals(run_dir, index: int, datamodule, strategy, *, seed: int = 0, T: int | None = None,
                   device=None, progress: bool = False, stats: dict | None = None,
                   ranks: Ranks | None = None, levels=()) -> dict[str, torch.Tensor] | None:
    """Signals of the finished model `index` for `strategy` at latency T (None: as
    trained), from the cache when it is valid, else computed and cached.

    Under DDP every rank must call it: rank 0 decides whether the cache is valid and reads
    it; on a miss every rank queries its shard and rank 0 writes the entry, once and
    atomically. Rank 0 gets the signals, the other ranks None."""
    out = cached_signals_by_latency(run_dir, index, datamodule, strategy, [T], seed=seed, device=device,
                                    progress=progress, stats=stats, ranks=ranks, levels=levels)
    return None if out is None else out[T]


def cached_signals_by_latency(run_dir, index: int, datamodule, strategy, latencies=(None,), *,
                              seed: int = 0, device=None, progress: bool = False, stats: dict | None = None,
                              ranks: Ranks | None = None, levels=()) -> dict[int | None, dict[str, torch.Tensor]] | None:
    """`cached_signals` at several latencies: {latency: signals} for each of `latencies`
    (None: as trained; an ANN has no latency and gets its one entry under every key).

    Every latency keeps its own cache entry (``cache_key(strategy, t, seed)``), so a later
    request for one of them hits. The missing entries of a direct-encoded SNN are computed
    from ONE run at T = max(missing latencies), read out after each t steps; a
    Poisson-encoded SNN, or a single missing entry, runs once per latency. Under DDP every
    rank must call it with the same arguments: rank 0 checks and reads the caches, every
    rank queries its shard of what is missing, rank 0 merges and writes. Rank 0 gets the
    signals, the other ranks None. `stats` counts one hit or miss per (model, latency) entry.

    `levels` (attacks/hooks.py's RECORDED) adds each level's tensors ("<split>/<level>"), or its
    reason in "unavailable", from its own entry; a latency counts as a hit only when its entry
    and every asked level's entry are valid."""
    ranks = ranks or Ranks()
    ckpt = checkpoint_path(run_dir, index)
    fingerprint = datamodule.plan.fingerprint
    strategy = parse_query(strategy)
    directory = signals_dir(run_dir, index)
    done = read_done(run_dir, index)
    # On every call, hit or miss: the folder holds model `index` of this plan (its done.json,
    # which records its checkpoint's hash, says so). The entries below travel with the folder.
    check_model_folder(run_dir, index, done, fingerprint)
    latencies = list(dict.fromkeys(latencies)) or [None]
    # The latency is part of the key: an ANN has none, an SNN runs at T (None: as trained).
    effective = {lat: None if done.get("kind") == "ann" else (done.get("T") if lat is None else lat) for lat in latencies}
    Ts = list(dict.fromkeys(effective.values()))
    paths = {T: (directory / f"{cache_key(strategy, T, seed)}.pt", directory / f"{cache_key(strategy, T, seed)}.json")
             for T in Ts}
    found: dict[int | None, dict[str, torch.Tensor]] = {}
    metas: dict[int | None, dict] = {}
    error = None
    if ranks.is_zero:
        sha = None
        todo = f"restore it, or retrain that model with `{retrain_command(index)}`"
        if not ckpt.is_file():
            error = f"checkpoint {ckpt} of the finished model_{index} is missing; {todo}"
        else:
            try:  # the checkpoint the model finished with, not one changed since
                verify_checkpoint(ckpt, f"checkpoint {ckpt}", done.get("checkpoint_sha256"), hint=todo)
                sha = file_sha256(ckpt)
            except ConfigError as err:
                error = str(err)
        for T in Ts if error is None else []:
            data_path, meta_path = paths[T]
            metas[T] = meta = entry_key(sha, datamodule, strategy, T, seed, index, done.get("precision"))
            if not (meta_path.is_file() and data_path.is_file()):
                continue
            try:
                key = json.loads(meta_path.read_text())
                recorded = key.pop("tensors_sha256")
            except Exception:
                key, recorded = None, None
            if key != meta:
                continue  # another checkpoint, plan, strategy or seed: recomputed and replaced
            found[T] = _valid_entry(data_path, recorded, strategy.num_queries, meta)
            for level in levels if found[T] is not None else []:
                part = _level_entry(level_paths(paths[T], level), strategy.num_queries, {**meta, "level": level})
                if part is None:
                    found[T] = None
                    break
                why = part.pop("unavailable", {})
                found[T].update(part)
                if why:
                    found[T].setdefault("unavailable", {}).update(why)
            if found[T] is None:
                del found[T]
    # Rank 0's decision holds for every rank (a rank must not query alone, nor skip a query).
    hits, error = ranks.broadcast(([T for T in Ts if T in found], error))
    if error:
        raise ConfigError(error)
    if stats is not None and hits:
        stats["hits"] = stats.get("hits", 0) + len(hits)
    found = {T: with_probability(tensors) for T, tensors in found.items()}
    missing = [T for T in Ts if T not in hits]
    if missing:
        model, _ = Classifier.from_checkpoint(ckpt, fingerprint, index)
        if len(missing) > 1 and one_pass_latencies(model):
            computed = compute_signals_by_latency(model, datamodule, strategy, missing, seed=seed, device=device,
                                                  progress=progress, ranks=ranks, levels=levels)
        else:
            computed = {T: compute_signals(model, datamodule, strategy, seed=seed, T=T, device=device,
                                           progress=progress, ranks=ranks, levels=levels) for T in missing}
        if ranks.is_zero:
            for T in missing:
                write_entry(paths[T], metas[T], computed[T], levels)
            found.update(computed)
        if stats is not None:
            stats["misses"] = stats.get("misses", 0) + len(missing)
    if not ranks.is_zero:
        return None
    return {lat: found[T] for lat, T in effective.items()}


def _valid_entry(path, recorded_sha: str | None, num_queries: int, meta: dict) -> dict | None:
    """The cached tensors, or None (with a warning) when the file cannot be read, does not match
    the hash recorded with it, or lacks a key, a shape, a type or finite values."""
    shapes = {"audit": (num_queries, meta["audit_size"]), "population": (num_queries, meta["population_size"])}
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(tensors, dict) or tensors_sha256(tensors) != recorded_sha:
            raise ValueError("its contents do not match the hash recorded when it was written")
        for split, shape in shapes.items():
            phi, correct = tensors[f"{split}/rescaled_logit"], tensors[f"{split}/correct"]
            if tuple(phi.shape) != shape or tuple(correct.shape) != shape:
                raise ValueError(f"{split} signals have shape {tuple(phi.shape)}, expected {shape}")
            if phi.dtype != torch.float32 or correct.dtype != torch.bool or not bool(torch.isfinite(phi).all()):
                raise ValueError(f"{split} signals are not finite float32 / bool")
    except Exception as err:
        warnings.warn(f"signal cache {path} is damaged ({first_line(err)}); recomputing it", stacklevel=3)
        return None
    return tensors


def _level_entry(paths: tuple, num_queries: int, meta: dict) -> dict | None:
    """A level's cached part of the signals ({"<split>/<level>": tensor} or {"unavailable":
    {level: why}}), or None when missing, for another key, or damaged (with a warning)."""
    data_path, meta_path = paths
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    try:
        key = json.loads(meta_path.read_text())
        recorded = key.pop("tensors_sha256")
        why = key.pop("unavailable", None)
    except Exception:
        return None
    if key != meta:
        return None
    level = meta["level"]
    try:
        tensors = torch.load(data_path, map_location="cpu", weights_only=True)
        if not isinstance(tensors, dict) or tensors_sha256(tensors) != recorded:
            raise ValueError("its contents do not match the hash recorded when it was written")
        if why is not None:
            if tensors or not isinstance(why, str):
                raise ValueError("an unavailable level's entry holds tensors or no reason")
            return {"unavailable": {level: why}}
        widths = set()
        for split, n in (("audit", meta["audit_size"]), ("population", meta["population_size"])):
            x = tensors[f"{split}/{level}"]
            if x.dim() != 3 or x.shape[0] != num_queries or x.shape[2] != n or x.dtype != torch.float32 \
                    or not bool(torch.isfinite(x).all()):
                raise ValueError(f"{split}/{level} has shape {tuple(x.shape)} {x.dtype}, expected finite float32 "
                                 f"[{num_queries}, ., {n}]")
            widths.add(x.shape[1])
        expected = {"steps": meta["T"], "membrane": 4}.get(level)
        if len(widths) != 1 or (expected is not None and widths != {expected}) or widths == {0}:
            raise ValueError(f"{level} widths {sorted(widths)} differ between the splits or from {expected}")
    except Exception as err:
        warnings.warn(f"signal cache {data_path} is damaged ({first_line(err)}); recomputing it", stacklevel=3)
        return None
    return tensors
