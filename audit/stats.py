"""The report's numbers with their uncertainty: per target, a 95% interval for each metric
and the one-run empirical epsilon lower bound of each attack; across the targets of a run
(every model taking its turn as the target), the mean and a 95% interval.

The math is in attacks/intervals.py and attacks/epsilon.py; this module decides what the
report holds:
- AUC: DeLong's interval (exact, no resampling); TPR@1%FPR and TPR@0.1%FPR: a stratified
  bootstrap (members and non-members resampled apart, B = settings.bootstrap, seeded);
- a metric the audit cannot measure (TPR at an FPR below 1 / N_out) is None, without interval;
- eps_lb: Steinke, Nasr and Jagielski's bound at 95% from the attack's scores, for the plan's
  design (exactly half the audit set are members; see attacks/epsilon.py), delta = settings.eps_delta;
- across targets: a Student-t interval of the mean over the targets (n >= 2).
"""

from __future__ import annotations

import math

from attacks import eps_lower_bound, mean_interval, roc_intervals

from .scoring import SUMMARY, summary

CONFIDENCE = 0.95
INTERVAL_METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr")
ACROSS_METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "eps_lb")


def attack_summaries(metrics: dict[str, dict], is_member, settings, *, intervals: bool = True,
                     num_nonmembers: int | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """({attack setting: its numbers}, {attack setting: the eps_lb record}) for one target.
    `metrics` hold roc_metrics and the attack's `scores`; with intervals, each measurable
    metric gets `<metric>_ci` = [lo, hi] and each attack its `eps_lb`."""
    out, eps = {}, {}
    for name, m in metrics.items():
        row = summary(m, SUMMARY, num_nonmembers)
        if "access" in m:  # what the attack saw of the model (design: every attack states its level)
            row["access"] = m["access"]
        if intervals and "scores" in m:
            if settings.bootstrap:
                cis = roc_intervals(m["scores"], is_member, num_bootstrap=settings.bootstrap, seed=settings.query_seed,
                                    level=CONFIDENCE, metrics=INTERVAL_METRICS)
                for key, ci in cis.items():
                    row[f"{key}_ci"] = None if ci is None or row.get(key) is None else [float(ci[0]), float(ci[1])]
            record = eps_lower_bound(m["scores"], is_member, delta=settings.eps_delta, confidence=CONFIDENCE)
            row["eps_lb"] = float(record["eps_lb"])
            eps[name] = {k: v for k, v in record.items() if k != "assumptions"}
            eps[name]["assumptions"] = record["assumptions"]
        out[name] = row
    return out, eps


def across_targets(per_target: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """{attack setting: {metric: {"mean", "ci": [lo, hi], "n", "values"}}} over the targets;
    with one target the interval is null."""
    out: dict[str, dict] = {}
    names = list(dict.fromkeys(n for attacks in per_target.values() for n in attacks))
    for name in names:
        row = {}
        for key in ACROSS_METRICS:
            values = [float(a[name][key]) for a in per_target.values() if a.get(name, {}).get(key) is not None]
            if not values:
                continue
            lo, hi = mean_interval(values, CONFIDENCE) if len(values) >= 2 else (math.nan, math.nan)
            # the t-interval knows no range: clip it to the metric's ([0, 1], eps_lb >= 0)
            top = math.inf if key == "eps_lb" else 1.0
            row[key] = {"mean": sum(values) / len(values), "n": len(values), "values": values,
                        "ci": None if math.isnan(lo) else [max(0.0, float(lo)), min(top, float(hi))]}
        out[name] = row
    return out


EPS_ASSUMPTIONS = (
    "eps_lb is the empirical lower bound of Steinke, Nasr and Jagielski (NeurIPS 2023) from one training run, "
    "at 95% confidence: no (eps, delta)-DP training could have let the attack guess this many memberships "
    "right among its top and bottom scores, for an eps below it. Their theorem assumes every sample is a "
    "member independently with probability 1/2; this tool's plan makes exactly half the audit set members "
    "(a uniformly random half), so the p-values are multiplied by 2^N / C(N, N/2), which keeps the bound "
    "valid for the plan at the price of a smaller bound. It also assumes the target's training is the only "
    "other randomness (add/remove-one DP) and tests a grid of guess counts fixed in advance (Bonferroni).")
