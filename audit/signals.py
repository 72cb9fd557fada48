"""A model's attack signals on the audit set and the population: one pass over each
per query strategy, in one process or sharded over DDP ranks (audit/distributed.py).

Signals are kept per query and sample: the rescaled logit phi (float32) and a bool
`correct`; the true-class probability is recovered as sigmoid(phi) in float64
(`with_probability`), because float32 probabilities round every p > 1 - 6e-8 to 1.0
and would tie the most confident samples.

Latencies: a direct-encoded SNN's signals at several latencies t come from one run at
T = max(t) read out after t steps (`compute_signals_by_latency`). They equal a t-step
run's to float rounding, not bit for bit: a batch of T steps goes through the
convolutions in another shape than one of t steps.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from attacks import query_signals, query_signals_by_latency
from core.errors import ConfigError

from .distributed import Ranks, merge_shards, pack_shard, shard_loader

SPLITS = ("audit", "population")
STORED = ("rescaled_logit", "correct")


def query_split(model, loader: DataLoader, strategy, latencies=None, *, seed: int = 0, device=None,
                progress: bool = False, ranks: Ranks | None = None,
                keys=STORED, levels=()) -> dict[int | None, dict[str, torch.Tensor]] | None:
    """Signals (only `keys`, and the recorded `levels` the model has) over the whole of
    ``loader.dataset``: {None: signals} for one plain pass (``query_signals``), or {t: signals}
    for every t in `latencies` from one pass (``query_signals_by_latency``). In one process, or
    sharded over `ranks` (one gather) and merged on rank 0; the other ranks get None. A level
    the model lacks is absent and ``unavailable`` = {level: why} says why."""
    n = len(loader.dataset)
    sharded = ranks is not None and ranks.sharded
    if sharded:
        loader = shard_loader(loader, ranks.rank, ranks.world_size)
    kwargs = dict(seed=seed, num_samples=n, device=device, progress=progress and (not sharded or ranks.is_zero),
                  allow_missing=sharded, levels=levels)
    if latencies is None:
        signals = {None: query_signals(model, loader, strategy, **kwargs)}
    else:
        signals = query_signals_by_latency(model, loader, strategy, latencies, **kwargs)
    wanted = (*keys, *levels, *(["seen"] if sharded else []))
    kept = {t: {k: s[k] for k in wanted if k in s} for t, s in signals.items()}
    reasons = {t: s.get("unavailable") for t, s in signals.items()}
    if not sharded:
        return {t: {**s, **({"unavailable": reasons[t]} if reasons[t] else {})} for t, s in kept.items()}
    shards = ranks.gather({t: (pack_shard(s), reasons[t]) for t, s in kept.items()})
    if not ranks.is_zero:
        return None
    out = {}
    for t in kept:  # a level that any rank could not record is unavailable for the whole split
        why = {k: v for shard in shards for k, v in (shard[t][1] or {}).items()}
        merged = merge_shards([{k: v for k, v in shard[t][0].items() if k not in why} for shard in shards], n)
        out[t] = {**merged, **({"unavailable": why} if why else {})}
    return out


def _both_splits(model, datamodule, strategy, latencies, *, seed, device, progress, audit_positions,
                 ranks, levels=()) -> dict[int | None, dict[str, torch.Tensor]] | None:
    out: dict[int | None, dict[str, torch.Tensor]] = {}
    loaders = {"audit": datamodule.audit_dataloader(audit_positions), "population": datamodule.population_dataloader()}
    for split, loader in loaders.items():
        signals = query_split(model, loader, strategy, latencies, seed=seed, device=device, progress=progress,
                              ranks=ranks, levels=levels)
        for t, s in (signals or {}).items():
            out.setdefault(t, {})[f"{split}/rescaled_logit"] = s["rescaled_logit"].float()
            out[t][f"{split}/correct"] = s["correct"]
            for level in levels:
                if level in s:
                    out[t][f"{split}/{level}"] = s[level].float()
            if s.get("unavailable"):
                why = out[t].setdefault("unavailable", {})
                why.update(s["unavailable"])
    for tensors in out.values():  # a level only one split could record is unavailable for both
        for level in tensors.get("unavailable", {}):
            for split in SPLITS:
                tensors.pop(f"{split}/{level}", None)
    if ranks is not None and not ranks.is_zero:
        return None
    return {t: with_probability(tensors) for t, tensors in out.items()}


def compute_signals(model, datamodule, strategy, *, seed: int = 0, T: int | None = None, device=None,
                    progress: bool = False, audit_positions: torch.Tensor | None = None,
                    ranks: Ranks | None = None, levels=()) -> dict[str, torch.Tensor] | None:
    """One pass over the audit set and one over the population, per query, the SNN run with
    T steps when given. Returns {"audit/probability": [Q, N], ..., "population/correct":
    [Q, Z]}, and for each recorded level of `levels` (attacks/hooks.py) "<split>/<level>"
    from the same pass, or its reason in "unavailable" ({level: why}); under DDP (`ranks`
    sharded) every rank must call it, and only rank 0 gets the signals (else None)."""
    if T is not None and getattr(model, "T", None) is not None:
        if T != model.T and getattr(model, "step_readout", True) is False:
            # The target is refused up front (check_latencies); this catches a reference.
            raise ConfigError(f"latency T={T}: a model.net that returns logits [B, classes] has no readout per time "
                              f"step and is audited at its trained T={model.T} only; latency audits need a network "
                              f"that returns [T, B, classes]")
        model.T = T
    out = _both_splits(model, datamodule, strategy, None, seed=seed, device=device, progress=progress,
                       audit_positions=audit_positions, ranks=ranks, levels=levels)
    return None if out is None else out[None]


def compute_signals_by_latency(model, datamodule, strategy, latencies, *, seed: int = 0, device=None,
                               progress: bool = False, audit_positions: torch.Tensor | None = None,
                               ranks: Ranks | None = None, levels=()) -> dict[int, dict[str, torch.Tensor]] | None:
    """``compute_signals`` at every latency t in `latencies` from one pass over the audit set
    and one over the population, the SNN run at T = max(latencies) and read out after t
    steps (see `one_pass_latencies` for when that equals a t-step run). {t: signals} on
    rank 0, None on the other ranks; under DDP every rank must call it."""
    return _both_splits(model, datamodule, strategy, list(latencies), seed=seed, device=device, progress=progress,
                        audit_positions=audit_positions, ranks=ranks, levels=levels)


def one_pass_latencies(model) -> bool:
    """Whether the signals at several latencies t may come from one run at T = max(t), read
    out early: an SNN with direct encoding, whose steps are causal and whose input for t
    steps (the image, or per-time-step query masks, which depend on the step, not on T) is
    the prefix of its input for T steps; its state is reset in every forward_steps. Not for
    a network of your own that returns [B, classes] (`step_readout` False): it has no steps
    to read.

    Not with Poisson encoding: the spike trains come from a generator seeded per forward,
    and only a generator that fills a tensor in order makes the first t steps of a T-step
    draw those of a t-step draw. The CPU's does (checked here); CUDA's Philox assigns its
    numbers by thread layout, which depends on the tensor's size. A cache entry must not
    depend on the device or on which other latencies were asked for, so Poisson SNNs run
    once per latency."""
    return getattr(model, "T", None) is not None and getattr(model, "encoding", None) == "direct" \
        and callable(getattr(model, "forward_steps", None)) and getattr(model, "step_readout", True) is not False


def with_probability(tensors: dict) -> dict:
    """Add "<split>/probability" = sigmoid(rescaled logit), float64."""
    out = {k: v for k, v in tensors.items() if not k.endswith("/probability")}
    for split in SPLITS:
        out[f"{split}/probability"] = torch.sigmoid(out[f"{split}/rescaled_logit"].double())
    return out


def stored(tensors: dict[str, torch.Tensor], level: str | None = None) -> dict[str, torch.Tensor]:
    """What a cache entry keeps: the rescaled logit and `correct` of each split; with `level`,
    that level's tensors of each split (its own entry)."""
    keep = STORED if level is None else (level,)
    return {k: v for k, v in tensors.items() if "/" in k and k.split("/")[-1] in keep}


def subset(tensors: dict[str, torch.Tensor] | None, positions: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
    """Restrict the audit part of signals to `positions` (None, a non-zero DDP rank's share, stays None)."""
    if positions is None or tensors is None:
        return tensors
    return {k: (v[..., positions] if k.startswith("audit/") else v) for k, v in tensors.items()}
