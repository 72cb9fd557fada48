"""The black-box canary audit: the one-run bound of Steinke, Nasr and Jagielski (NeurIPS 2023)
on the plan's canaries (data.canaries, datamodules/canaries.py).

Each canary is scored by the target's confidence on its canary label (softmax probability,
the plain query): an included canary was trained on with that label, so a high confidence
suggests inclusion. `attacks.canary_eps_lower_bound` turns the scores and the inclusion bits
into guesses and a 95% bound, with the number of guesses chosen on a grid fixed by the canary
count (Bonferroni across the grid).

Per epoch, the callback logs the bound of that epoch's model as `audit/canary_eps_lb`. Each
value is a 95% bound for its own epoch taken alone; looking at all of them and keeping the
largest is not (no correction across epochs is applied). Only the final one, the report's
`canary_audit`, is stated as the 95% bound.
"""

from __future__ import annotations

import torch

from attacks import canary_eps_lower_bound


@torch.no_grad()
def canary_scores(model, dm, device=None) -> torch.Tensor | None:
    """The target's confidence on each canary's label, float64 [m] (None without canaries)."""
    canaries = dm.canary_set()
    if canaries is None:
        return None
    loader = torch.utils.data.DataLoader(canaries, batch_size=dm.eval_batch_size)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, y, _ in loader:
            probs = torch.softmax(model(x.to(device)).double(), dim=-1)
            out.append(probs.gather(1, y.to(device)[:, None]).squeeze(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def canary_audit(dm, scores: torch.Tensor, delta: float) -> dict:
    """report.json's `canary_audit`: {count, kind, guesses, correct, eps_lb, delta} and the guess
    pair (k_plus, k_minus), confidence and the number of pairs tried (candidates)."""
    out = canary_eps_lower_bound(scores, dm.canary_included, delta=delta)
    return {"count": out["count"], "kind": dm.plan.canaries.kind, "guesses": out["guesses"],
            "correct": out["correct"], "eps_lb": out["eps_lb"], "delta": out["delta"], "k_plus": out["k_plus"],
            "k_minus": out["k_minus"], "confidence": out["confidence"], "candidates": out["candidates"],
            "score": "the target's confidence on the canary's label"}


def checkpoint_canary_audit(dm, run_dir, done: dict, settings, device=None) -> dict | None:
    """`run.py audit`'s canary audit of the finished target (model 0's checkpoint, checked
    against the plan), or None without canaries."""
    if dm.canary_set() is None:
        return None
    from core.rundir import checkpoint_path
    from lightning_modules import Classifier

    model, _ = Classifier.from_checkpoint(checkpoint_path(run_dir, 0), dm.plan.fingerprint, 0)
    if device is not None:
        model = model.to(device)
    dp = done.get("dp")
    return canary_audit(dm, canary_scores(model, dm), dp["delta"] if dp else settings.eps_delta)


def whitebox_canary_audit(model) -> dict | None:
    """The white-box one-run bound of a DP-SGD model's gradient canaries (`model.dp.audit_canaries`)
    as its weights are now: {count, guesses, correct, eps_lb, delta, k_plus, k_minus, confidence},
    or None without them."""
    private = getattr(model, "private", None)
    raw = private.canary_scores() if private is not None else None
    if raw is None:
        return None
    scores, included, delta = raw
    out = canary_eps_lower_bound(scores, included, delta=delta)
    return {k: out[k] for k in ("count", "guesses", "correct", "eps_lb", "delta", "k_plus", "k_minus", "confidence")}


def dp_facts_with_canaries(model) -> dict | None:
    """The model's DP facts (`dp_facts`) with its white-box canary audit as `audit_canaries`."""
    facts = model.dp_facts() if callable(getattr(model, "dp_facts", None)) else None
    if facts is not None:
        facts = {**facts, "audit_canaries": whitebox_canary_audit(model)}
    return facts


def canary_delta(model, settings) -> float:
    """The delta of the canary bound: a DP target's own delta (so that the bound and the
    accountant's epsilon speak of the same delta), else the audit's eps_delta."""
    private = getattr(model, "private", None)
    return private.settings.delta if private is not None else settings.eps_delta
