"""Run a model over a loader with a query strategy; results in sample-index order.

Contract: ``model(x)`` returns logits [B, C]. An SNN exposes an int ``T`` and
accepts [B, C, H, W] or a time-expanded [T, B, C, H, W] (what per-time-step
dropout feeds it); it must reset its state inside ``forward``. Loaders yield
``(x, y, index)`` with ``index`` the sample positions 0..N-1; a sample seen
twice (DistributedSampler pads by repeating) is kept once, first seen wins.

``query_signals_by_latency`` reads an SNN's readout at every step (``forward_steps``)
once, at T = max(latencies), and gives the signals of its mean over the first t steps
for every requested t (a direct-encoded SNN run for t steps gives the same logits).
An SNN whose network returns logits only, no readout per step, says so with
``step_readout = False``; ``query_signals_by_latency`` refuses it.

One pass over the loader, queries inside the batch loop, signals reduced per
batch (the [Q, N, C] logits are never held by ``query_signals``), results kept
on the device until the end: no host sync per batch.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor

from .hooks import RECORDED, LevelRecorder, level_reasons, membrane_at, spikes_at
from .queries import QueryStrategy, parse_query
from .signals import _rescaled_logit, _true_class_probability


def _device_of(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _unpack(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) < 3:
        raise ValueError("loader must yield batches (x, y, index) with index the sample positions 0..N-1, "
                         f"got {type(batch).__name__}" + (f" of length {len(batch)}" if hasattr(batch, "__len__") else ""))
    return batch[0], batch[1], batch[2]


def _run(model, loader, strategy, seed, device, progress, reduce: Callable[..., tuple],
         steps: bool = False, recorder=None):
    """The batch loop: (per-batch results of ``reduce(logits [Q, B, C], y, recorded)``, indices, labels).

    With ``steps`` the model is queried through ``model.forward_steps`` and ``reduce``
    gets the readout at every time step, [Q, T, B, C]. With a `recorder` (attacks/hooks.py,
    already entered) `recorded` holds what its hooks saw in each query's forward (a list of Q
    dicts), else None."""
    strategy: QueryStrategy = parse_query(strategy)
    device = torch.device(device) if device is not None else _device_of(model)
    T = getattr(model, "T", None)
    modes = [(m, m.training) for m in model.modules()]
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        try:
            total = len(loader)
        except TypeError:
            total = None
        batches = tqdm(loader, total=total, desc=f"query {strategy.name}", leave=False)
    parts, indices, labels = [], [], []
    model.eval()
    try:
        # Signals are float32 whatever the training precision: under bf16-mixed (Lightning's
        # autocast) a query made inside the autocast region would get bf16 logits, whose 8-bit
        # mantissa ties most confident samples.
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for batch in batches:
                x, y, index = _unpack(batch)
                x = x.to(device, non_blocking=True)
                index = torch.as_tensor(index).to(device, non_blocking=True)
                forward = model.forward_steps if steps else model
                out, recorded = [], [] if recorder is not None else None
                for q in range(strategy.num_queries):
                    if recorder is not None:
                        recorder.start(x.shape[0])
                    out.append(forward(strategy.apply(x, index, q, seed, T)).float())
                    if recorder is not None:
                        recorded.append(recorder.collect())
                if steps and (out[0].ndim != 3 or out[0].shape[:2] != (T, x.shape[0])):
                    raise ValueError(f"forward_steps must return the readout [T, B, C] = [{T}, {x.shape[0]}, C], "
                                     f"got shape {tuple(out[0].shape)}")
                if not steps and (out[0].ndim != 2 or out[0].shape[0] != x.shape[0]):
                    raise ValueError(f"model must return logits [B, C] = [{x.shape[0]}, C], "
                                     f"got shape {tuple(out[0].shape)}")
                y = torch.as_tensor(y).to(device, non_blocking=True).long()
                parts.append(reduce(torch.stack(out), y, recorded))
                indices.append(index.long())
                labels.append(y)
    finally:
        model.train(modes[0][1])
        for m, mode in modes:  # submodules that were in a different mode than the root
            m.training = mode
    if not indices:
        raise ValueError("loader yielded no batches")
    return parts, torch.cat(indices), torch.cat(labels)


def _sample_order(index: Tensor, num_samples: int | None, allow_missing: bool):
    """(positions into the gathered rows, one per seen sample in index order; seen mask [N])."""
    lo, hi = int(index.min()), int(index.max())
    n = hi + 1 if num_samples is None else int(num_samples)
    if lo < 0 or hi >= n:
        raise ValueError(f"sample indices must lie in [0, num_samples - 1] = [0, {n - 1}], got [{lo}, {hi}]")
    m = index.numel()
    rows = torch.arange(m, device=index.device)
    first = torch.full((n,), m, dtype=torch.long, device=index.device).scatter_reduce_(0, index, rows, "amin")
    seen = first < m
    if not allow_missing and not bool(seen.all()):
        missing = (~seen).nonzero().flatten()
        raise ValueError(f"{missing.numel()} of num_samples = {n} sample indices never appeared in the loader "
                         f"(first: {missing[:5].tolist()})")
    return first[seen], seen


def query_logits(model, loader, strategy, *, seed: int = 0, num_samples: int | None = None, device=None,
                 progress: bool = False) -> tuple[Tensor, Tensor]:
    """Logits [Q, N, C] (float32, CPU) and labels [N] (long), in sample-index order.

    The model is put in eval mode under ``torch.no_grad`` and its training mode
    restored afterwards. ``num_samples`` defaults to the largest index + 1; an
    index in 0..N-1 that never appears is an error.
    """
    parts, index, labels = _run(model, loader, strategy, seed, device, progress,
                                lambda logits, y, recorded: (logits.float(),))
    rows, _ = _sample_order(index, num_samples, allow_missing=False)
    logits = torch.cat([p[0] for p in parts], dim=1)
    return logits[:, rows].cpu(), labels[rows].cpu()


def query_signals(model, loader, strategy, *, seed: int = 0, num_samples: int | None = None, device=None,
                  progress: bool = False, temperature: float = 1.0, allow_missing: bool = False,
                  levels=()) -> dict:
    """Per-query signals in sample-index order, reduced batch by batch.

    Returns ``probability`` [Q, N] (true-class probability, float64),
    ``rescaled_logit`` [Q, N] (float64), ``correct`` [Q, N] (bool, argmax ==
    label) and ``labels`` [N] (long), all on the CPU. With ``allow_missing``
    (one DDP rank sees only its shard) unseen samples hold NaN / False / -1 and
    a ``seen`` [N] bool mask is added, to merge after gathering the ranks.

    ``levels`` (of attacks/hooks.py's RECORDED) adds, from the same forward pass, ``steps``
    [Q, T, N] (the true-class rescaled logit of the readout at each step; the model is
    queried through ``forward_steps`` and its logits are their mean, as its forward),
    ``spikes`` [Q, L, N] and ``membrane`` [Q, 4, N] (float32, forward hooks on the neuron
    modules). A level the model does not have is left out and ``unavailable`` = {level: why}
    says why. No level asked: no hook is registered.
    """
    _check_temperature(temperature)
    levels, unavailable = _levels(model, levels)
    steps = "steps" in levels

    def reduce(out: Tensor, y: Tensor, recorded):  # out [Q, B, C], or [Q, T, B, C] with steps
        logits = torch.stack([s.mean(0) for s in out]) if steps else out  # as the model's forward
        return _signals(logits, y, temperature) + _level_signals(levels, out, logits, y, recorded, None)

    with _recording(model, levels) as recorder:
        parts, index, labels = _run(model, loader, strategy, seed, device, progress, reduce, steps=steps,
                                    recorder=recorder)
    rows, seen = _sample_order(index, num_samples, allow_missing)
    return _finish(_assemble(parts, rows, seen, labels, allow_missing, (*BASE, *levels)), recorder, unavailable)


BASE = ("probability", "rescaled_logit", "correct")


def _levels(model, levels) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the levels to record, in RECORDED order; {asked level the model lacks: why})."""
    asked = set(levels or ())
    reasons = level_reasons(model, [lvl for lvl in RECORDED if lvl in asked])
    unknown = asked - set(RECORDED)
    if unknown:
        raise ValueError(f"levels {sorted(unknown)} are not recorded; allowed: {', '.join(RECORDED)}")
    return tuple(lvl for lvl, why in reasons.items() if why is None), {lvl: why for lvl, why in reasons.items() if why}


def _recording(model, levels):
    """The hooks' context: a LevelRecorder when `spikes` or `membrane` is asked, else nothing at all."""
    return LevelRecorder(model, levels) if {"spikes", "membrane"} & set(levels) else contextlib.nullcontext()


def _level_signals(levels, out: Tensor, logits: Tensor, y: Tensor, recorded, t: int | None) -> tuple:
    """The recorded levels' per-batch signals over the first t steps (None: all), each [Q, ., B]
    float32; a level the hooks could not record this batch is NaN (dropped by `_finish`)."""
    res = []
    Q, B = logits.shape[0], logits.shape[1]
    for level in levels:
        if level == "steps":  # out [Q, T, B, C]
            res.append(_rescaled_logit(out[:, :t], y.expand(out[:, :t].shape[:-1])).float())
        elif level == "spikes":
            got = [r.get("spikes") for r in recorded]
            res.append(torch.stack([spikes_at(g, t) for g in got]) if all(g is not None for g in got)
                       else torch.full((Q, recorded[0]["layers"], B), float("nan"), device=logits.device))
        elif level == "membrane":
            got = [r.get("membrane") for r in recorded]
            z_y = logits.gather(-1, y.expand(Q, B).unsqueeze(-1)).squeeze(-1)
            res.append(torch.stack([membrane_at(g, z_y[q], t) for q, g in enumerate(got)])
                       if all(g is not None for g in got)
                       else torch.full((Q, 4, B), float("nan"), device=logits.device))
    return tuple(res)


def _finish(out: dict, recorder, unavailable: dict) -> dict:
    """Drop the levels the hooks failed on (their reason into ``unavailable``); add ``unavailable``."""
    failed = getattr(recorder, "failed", None)
    if failed is not None:
        for level in recorder.levels:
            out.pop(level, None)
            unavailable[level] = failed
    if unavailable:
        out["unavailable"] = dict(unavailable)
    return out


def _check_temperature(temperature) -> None:
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _signals(logits: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(probability, rescaled logit, correct), each [Q, B], of logits [Q, B, C] and labels [B]."""
    y = y.expand(logits.shape[:-1])
    return (_true_class_probability(logits, y, temperature), _rescaled_logit(logits, y), logits.argmax(-1) == y)


def _assemble(parts: list[tuple], rows: Tensor, seen: Tensor, labels: Tensor, allow_missing: bool,
              keys=BASE) -> dict:
    """``query_signals``' dict from the per-batch tuples of `keys`' tensors, each [..., B]."""
    out = {}
    for i, key in enumerate(keys):
        vals = torch.cat([p[i] for p in parts], dim=-1)
        full = torch.full((*vals.shape[:-1], seen.numel()), float("nan") if vals.is_floating_point() else False,
                          dtype=vals.dtype, device=vals.device)
        full[..., seen] = vals[..., rows]
        out[key] = full.cpu()
    out["labels"] = torch.full((seen.numel(),), -1, dtype=torch.long, device=labels.device)
    out["labels"][seen] = labels[rows]
    out["labels"] = out["labels"].cpu()
    if allow_missing:
        out["seen"] = seen.cpu()
    return out


def check_latencies(latencies) -> list[int]:
    """The distinct latencies in the given order; ValueError unless a non-empty list of ints >= 1."""
    try:
        values = list(latencies)
    except TypeError:
        values = None
    if not values or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in values):
        raise ValueError(f"latencies must be a non-empty list of ints >= 1, got {latencies!r}")
    return list(dict.fromkeys(values))


def query_signals_by_latency(model, loader, strategy, latencies, *, seed: int = 0, num_samples: int | None = None,
                             device=None, progress: bool = False, allow_missing: bool = False,
                             temperature: float = 1.0, levels=()) -> dict[int, dict]:
    """``query_signals`` of an SNN's readout averaged over its first t steps, for every t in
    ``latencies``, from ONE pass over the loader: {t: the dict ``query_signals`` returns}.

    The model runs at T = max(latencies) (``model.T`` is set for the pass and restored
    afterwards), queried through ``model.forward_steps`` ([T, B, C]); the logits at t are
    the mean of its first t steps, ``steps[:t].mean(0)``, which at t = T is exactly what
    ``model(x)`` returns. Query inputs are built for T steps; a per-time-step mask at step
    t does not depend on T, so the first t steps see what a t-step query sees.

    This equals ``query_signals`` of the model run with ``model.T = t`` when the model is
    causal over time and its input for t steps is the prefix of its input for T steps:
    an SNN with direct encoding whose state is reset in ``forward_steps``. For
    stochastic (e.g. Poisson) encodings the spike trains of a t-step run need not be the
    prefix of a T-step run's; then this is the T-step run read out early, not a t-step run.
    Requires ``model.forward_steps`` and an int ``model.T`` (an SNN), and no
    ``model.step_readout`` set to False (a network that returns [B, C] only); ValueError
    otherwise. ``levels`` as in ``query_signals``, each over the first t steps (the hooks
    keep every step: spikes and membrane statistics of a t-step prefix come from the pass).
    """
    _check_temperature(temperature)
    latencies = check_latencies(latencies)
    if not callable(getattr(model, "forward_steps", None)) or isinstance(getattr(model, "T", None), bool) \
            or not isinstance(getattr(model, "T", None), int):
        raise ValueError("query_signals_by_latency needs an SNN: a model with forward_steps(x) -> [T, B, C] and "
                         f"an int T; got {type(model).__name__} with T={getattr(model, 'T', None)!r}")
    if getattr(model, "step_readout", True) is False:
        raise ValueError(f"query_signals_by_latency needs a readout per time step; {type(model).__name__} says it has "
                         "none (step_readout=False: its network returns logits [B, C] only)")

    levels, unavailable = _levels(model, levels)

    def reduce(steps: Tensor, y: Tensor, recorded):  # steps [Q, T, B, C], y [B]
        out = []
        for t in latencies:
            # Per query, the same op as the model's forward (steps.mean(0)), so that t = T is bit-identical.
            logits = torch.stack([s[:t].mean(0) for s in steps])
            out.append(_signals(logits, y, temperature) + _level_signals(levels, steps, logits, y, recorded, t))
        return tuple(out)

    trained_T = model.T
    model.T = max(latencies)
    try:
        with _recording(model, levels) as recorder:
            parts, index, labels = _run(model, loader, strategy, seed, device, progress, reduce, steps=True,
                                        recorder=recorder)
    finally:
        model.T = trained_T
    rows, seen = _sample_order(index, num_samples, allow_missing)
    return {t: _finish(_assemble([p[i] for p in parts], rows, seen, labels, allow_missing, (*BASE, *levels)),
                       recorder, dict(unavailable)) for i, t in enumerate(latencies)}
