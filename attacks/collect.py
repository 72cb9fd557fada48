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

from typing import Callable

import torch
from torch import Tensor

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


def _run(model, loader, strategy, seed, device, progress, reduce: Callable[[Tensor, Tensor], tuple],
         steps: bool = False):
    """The batch loop: (per-batch results of ``reduce(logits [Q, B, C], y)``, indices, labels).

    With ``steps`` the model is queried through ``model.forward_steps`` and ``reduce``
    gets the readout at every time step, [Q, T, B, C]."""
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
                out = [forward(strategy.apply(x, index, q, seed, T)).float() for q in range(strategy.num_queries)]
                if steps and (out[0].ndim != 3 or out[0].shape[:2] != (T, x.shape[0])):
                    raise ValueError(f"forward_steps must return the readout [T, B, C] = [{T}, {x.shape[0]}, C], "
                                     f"got shape {tuple(out[0].shape)}")
                if not steps and (out[0].ndim != 2 or out[0].shape[0] != x.shape[0]):
                    raise ValueError(f"model must return logits [B, C] = [{x.shape[0]}, C], "
                                     f"got shape {tuple(out[0].shape)}")
                y = torch.as_tensor(y).to(device, non_blocking=True).long()
                parts.append(reduce(torch.stack(out), y))
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
                                lambda logits, y: (logits.float(),))
    rows, _ = _sample_order(index, num_samples, allow_missing=False)
    logits = torch.cat([p[0] for p in parts], dim=1)
    return logits[:, rows].cpu(), labels[rows].cpu()


def query_signals(model, loader, strategy, *, seed: int = 0, num_samples: int | None = None, device=None,
                  progress: bool = False, temperature: float = 1.0, allow_missing: bool = False) -> dict:
    """Per-query signals in sample-index order, reduced batch by batch.

    Returns ``probability`` [Q, N] (true-class probability, float64),
    ``rescaled_logit`` [Q, N] (float64), ``correct`` [Q, N] (bool, argmax ==
    label) and ``labels`` [N] (long), all on the CPU. With ``allow_missing``
    (one DDP rank sees only its shard) unseen samples hold NaN / False / -1 and
    a ``seen`` [N] bool mask is added, to merge after gathering the ranks.
    """
    _check_temperature(temperature)

    def reduce(logits: Tensor, y: Tensor):  # logits [Q, B, C], y [B]
        return _signals(logits, y, temperature)

    parts, index, labels = _run(model, loader, strategy, seed, device, progress, reduce)
    rows, seen = _sample_order(index, num_samples, allow_missing)
    return _assemble(parts, rows, seen, labels, allow_missing)


def _check_temperature(temperature) -> None:
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _signals(logits: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(probability, rescaled logit, correct), each [Q, B], of logits [Q, B, C] and labels [B]."""
    y = y.expand(logits.shape[:-1])
    return (_true_class_probability(logits, y, temperature), _rescaled_logit(logits, y), logits.argmax(-1) == y)


def _assemble(parts: list[tuple], rows: Tensor, seen: Tensor, labels: Tensor, allow_missing: bool) -> dict:
    """``query_signals``' dict from the per-batch (probability, rescaled logit, correct) tuples."""
    out = {}
    for i, key in enumerate(("probability", "rescaled_logit", "correct")):
        vals = torch.cat([p[i] for p in parts], dim=1)
        full = torch.full((vals.shape[0], seen.numel()), float("nan") if vals.is_floating_point() else False,
                          dtype=vals.dtype, device=vals.device)
        full[:, seen] = vals[:, rows]
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
                             temperature: float = 1.0) -> dict[int, dict]:
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
    otherwise.
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

    def reduce(steps: Tensor, y: Tensor):  # steps [Q, T, B, C], y [B]
        # Per query, the same op as the model's forward (steps.mean(0)), so that t = T is bit-identical.
        return tuple(_signals(torch.stack([s[:t].mean(0) for s in steps]), y, temperature) for t in latencies)

    trained_T = model.T
    model.T = max(latencies)
    try:
        parts, index, labels = _run(model, loader, strategy, seed, device, progress, reduce, steps=True)
    finally:
        model.T = trained_T
    rows, seen = _sample_order(index, num_samples, allow_missing)
    return {t: _assemble([p[i] for p in parts], rows, seen, labels, allow_missing) for i, t in enumerate(latencies)}
