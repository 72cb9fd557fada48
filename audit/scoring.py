"""From signals to attack scores and metrics: the glue between the models' signals
(audit/signals.py, audit/cache.py) and the pure math in attacks/; and the one rule for
which models serve as references."""

from __future__ import annotations

import torch

from attacks import FPR_LEVELS, attack_p, attack_r, lira, reference_ratio, resolution_note, rmia, roc_metrics
from core.rundir import finished_models

ATTACKS = ("attack_p", "attack_r", "rmia_offline", "rmia_online", "lira_online", "lira_offline", "reference_ratio")
SUMMARY = ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "tpr@0.01%fpr", "tpr@0%fpr")
LOGGED = ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "tpr@0%fpr")


def setting_name(attack: str, strategy_name: str, latency: int | None = None) -> str:
    """attack[@query][,T<t>]: the plain name for plain queries at the trained latency."""
    parts = [p for p in (None if strategy_name == "plain" else strategy_name,
                         None if latency is None else f"T{latency}") if p]
    return f"{attack}@{','.join(parts)}" if parts else attack


def reference_indices(run_dir, num_references: int, target: int) -> list[int]:
    """The references of target `target`: every other model of the run (0..K) that finished
    training. With the paired plan each audit sample is IN for some of them and OUT for others."""
    return finished_models(run_dir, [k for k in range(num_references + 1) if k != target])


def runnable(names, ref_in: torch.Tensor | None, refs=()) -> tuple[list[str], dict[str, str]]:
    """The attacks that can run with these references (`ref_in` [K, N], None when none
    finished), and why the others cannot: all but Attack-P need a reference; Attack-R and the
    offline attacks an OUT reference for every audit sample (a reference pair that is
    complementary always gives one; two unpaired references, e.g. models 0 and 2 as the
    references of model 1 with K = 2, leave about a quarter of the samples without); the
    online attacks an IN and an OUT reference for every sample."""
    has_out = ref_in is not None and bool((~ref_in).any(0).all())
    covered = has_out and bool(ref_in.any(0).all())
    ok, skipped = [], {}
    for n in names:
        if n != "attack_p" and ref_in is None:
            skipped[n] = "needs reference models and none has finished training"
        elif n in ("rmia_online", "lira_online") and not covered:
            skipped[n] = f"needs an IN and an OUT reference for every sample; references: {list(refs)}"
        elif n in ("attack_r", "rmia_offline", "lira_offline") and not has_out:
            missing = int((~(~ref_in).any(0)).sum())
            skipped[n] = f"needs an OUT reference for every sample; {missing} samples have none among references {list(refs)}"
        else:
            ok.append(n)
    return ok, skipped


def score_attacks(names, target: dict, references: list[dict], ref_in: torch.Tensor | None, *,
                  rmia_offline_a: float = 0.3, rmia_gamma: float = 1.0, rmia_per_query: bool = False,
                  lira_fix_variance: bool | None = None) -> dict[str, torch.Tensor]:
    """Scores [N] per attack. `target` and each reference are signal dicts of one query
    strategy ("audit/probability" [Q, N], ...). Signals are averaged over the Q queries
    (RMIA optionally scores each query and averages the scores). `ref_in` [K, N] is the
    references' membership rows. LiRA's variance is fixed (one global sigma) by default
    when fewer than 64 references are IN/OUT per sample, as LiRA's paper advises."""
    p_t = target["audit/probability"].double()
    out: dict[str, torch.Tensor] = {}
    per_query = None
    if references:
        # Each reference is averaged over its Q queries before the K references are stacked:
        # [K, N], not the [K, Q, N] float64 stack (2.2 GB at K = 256, Q = 18, N = 60,000, and a
        # float32 copy beside it), which only per-query RMIA reads. Same numbers: row k of the
        # [K, Q, N] stack's mean over Q is computed as this reference's [Q, N] mean over Q
        # (tests/test_audit_scale.py checks bit equality with the stacked form).
        p_r = _stack_query_means(references, "audit/probability")                     # [K, N]
        pz_t = target["population/probability"].double()
        pz_r = _stack_query_means(references, "population/probability")
        phi_t = target["audit/rescaled_logit"].double().mean(0)
        phi_r = _stack_query_means(references, "audit/rescaled_logit")
        if lira_fix_variance is None:
            lira_fix_variance = len(references) < 128
    for name in names:
        if name == "attack_p":
            out[name] = attack_p(p_t.mean(0))
        elif name == "attack_r":
            out[name] = attack_r(p_t.mean(0), p_r, ref_in)
        elif name == "reference_ratio":
            out[name] = reference_ratio(p_t.mean(0), p_r)
        elif name.startswith("rmia_"):
            a = rmia_offline_a if name == "rmia_offline" else None
            if rmia_per_query:  # every query's signals: [K, Q, N] and [K, Q, Z], built once
                if per_query is None:
                    per_query = tuple(torch.stack([r[key] for r in references]).double()
                                      for key in ("audit/probability", "population/probability"))
                out[name] = rmia(p_t, per_query[0], pz_t, per_query[1], ref_in, offline_a=a, gamma=rmia_gamma,
                                 per_query=True)
            else:
                out[name] = rmia(p_t.mean(0), p_r, pz_t.mean(0), pz_r, ref_in, offline_a=a, gamma=rmia_gamma)
        elif name.startswith("lira_"):
            out[name] = lira(phi_t, phi_r, ref_in, online=name == "lira_online", fix_variance=lira_fix_variance)
    return out


def _stack_query_means(references: list[dict], key: str) -> torch.Tensor:
    """[K, N]: each reference's signal `key` [Q, N] in float64, averaged over its Q queries."""
    return torch.stack([r[key].double().mean(0) for r in references])


def accuracies(target: dict, is_member: torch.Tensor) -> dict[str, float]:
    """The target's accuracy on its training members and on the population (test),
    read off the first query's `correct` signals: no extra pass over the data."""
    train = float(target["audit/correct"][0][is_member].float().mean())
    test = float(target["population/correct"][0].float().mean())
    return {"train_acc": train, "test_acc": test, "acc_gap": train - test}


def evaluate(names, target: dict, references: list[dict], ref_in, is_member: torch.Tensor, **kwargs) -> dict[str, dict]:
    """roc_metrics (with the curve) per attack."""
    scores = score_attacks(names, target, references, ref_in, **kwargs)
    return {name: {**roc_metrics(s, is_member), "scores": s} for name, s in scores.items()}


def below_resolution(num_nonmembers: int | None) -> dict[str, str]:
    """The TPR-at-FPR metrics that `num_nonmembers` non-members cannot measure, and why: the
    smallest non-zero FPR is 1 / N_out, so TPR at 0.1% FPR with N_out = 808 is TPR at 0% FPR
    under another name. {metric: "N_out = 808 < 1,000"}."""
    if not num_nonmembers:
        return {}
    notes = {key: resolution_note(level, num_nonmembers) for key, level in FPR_LEVELS.items()}
    return {key: note.removeprefix("n/a (").removesuffix(")") for key, note in notes.items() if note}


def summary(metrics: dict, keys=SUMMARY, num_nonmembers: int | None = None) -> dict[str, float | None]:
    """The report's numbers of one attack; a metric below resolution is None (see below_resolution)."""
    na = below_resolution(num_nonmembers)
    return {k: None if k in na else float(metrics[k]) for k in keys if k in metrics}


def distinct_fraction(target: dict) -> float:
    """Distinct target confidences / N: low values mean many ties (coarse SNN outputs)."""
    p = target["audit/probability"].double().mean(0)
    return float(torch.unique(p).numel() / p.numel())
