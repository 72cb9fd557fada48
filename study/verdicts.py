"""Numbers with error bars for a study: each entry's mean and 95% interval over seeds x
targets, and the paper's three findings as paired differences with a verdict.

Where the numbers come from: every entry's audit audits each model of its run in turn as
the target (`run.py audit --targets all`), so one seed gives K + 1 values per entry and
metric, and a study with seeds gives seeds x (K + 1).

Intervals: the targets of one seed share a plan and a training recipe, so they are not
independent draws. With two seeds or more, an interval is a Student-t interval over the
per-seed means (df = seeds - 1): the seed is the independent unit. With one seed it falls
back to the t-interval over that seed's targets, and the report says so.

Findings (Guan et al., UAI 2025), each a paired difference on the same plan and seed, target
by target (target m of two entries of one seed has the same training members):
1. leakage grows with the latency: AUC at the largest T minus AUC at the smallest, for the
   directly trained SNNs and for the converted chain;
2. input dropout strengthens the attack on an SNN: dropout queries minus plain queries, per
   entry (the same models, other queries);
3. SNNs are about as vulnerable as ANNs: each SNN entry minus the ANN entry.
A verdict is "holds" when the 95% interval of the difference excludes 0 on the side the
paper claims, "reversed" when it excludes 0 on the other side, else "not resolved at 95%".
For finding 3 the claim is that SNNs are not the more private ones: "reversed" would mean an
SNN leaks less than the ANN; an interval around 0 fits "about as vulnerable".
"""

from __future__ import annotations

import math

from attacks import mean_interval, verdict
from audit.attacks import names_with

METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "eps_lb")
FINDING_ATTACKS = tuple(names_with("finding"))  # registered attacks that declare finding = True


def target_values(run: dict) -> dict[int, dict]:
    """{target model: {setting: numbers}} of one entry-seed report: every rotated target, or
    the main target alone when the run's references differ from it."""
    if run.get("targets"):
        return {int(m): t["attacks"] for m, t in run["targets"].items()}
    target = run.get("target") or {}
    return {int(target.get("index", 0)): run.get("attacks") or {}}


def _interval(per_seed: dict[str, list[float]]) -> tuple[list[float] | None, str]:
    means = [sum(v) / len(v) for v in per_seed.values() if v]
    if len(means) >= 2:
        lo, hi = mean_interval(means, 0.95)
        return [float(lo), float(hi)], f"t over {len(means)} seeds"
    values = [x for v in per_seed.values() for x in v]
    if len(values) >= 2:
        lo, hi = mean_interval(values, 0.95)
        return [float(lo), float(hi)], f"t over the {len(values)} targets of one seed"
    return None, "one value"


def bounds(metric: str) -> tuple[float, float]:
    """The range a metric's interval is clipped to: a t-interval knows nothing of [0, 1]."""
    return (0.0, math.inf) if metric == "eps_lb" else (0.0, 1.0)


def summarize(values: dict[str, list[float]], own_ci: list | None = None,
              limits: tuple[float, float] = (-math.inf, math.inf)) -> dict | None:
    """{mean, ci, n_seeds, n_values, basis} of values by seed. `own_ci`: the one value's own
    interval (the audit's DeLong or bootstrap interval of one target), used when there is a
    single value; intervals are clipped to `limits`."""
    flat = [x for v in values.values() for x in v]
    if not flat:
        return None
    ci, basis = _interval(values)
    if ci is None and len(flat) == 1 and own_ci is not None and None not in own_ci:
        ci, basis = [float(own_ci[0]), float(own_ci[1])], "the one target's own interval (its audit's)"
    if ci is not None and not any(math.isnan(c) for c in ci):
        ci = [max(limits[0], min(limits[1], c)) for c in ci]
    return {"mean": sum(flat) / len(flat), "ci": ci, "n_seeds": sum(1 for v in values.values() if v),
            "n_values": len(flat), "basis": basis}


def entry_summary(entry: dict) -> dict:
    """Per attack setting and metric, the entry's mean and interval over seeds x targets; and
    its accuracies likewise."""
    runs = entry.get("seeds") or {}
    out: dict[str, dict] = {}
    settings = list(dict.fromkeys(name for run in runs.values() for t in target_values(run).values() for name in t))
    for name in settings:
        row = {}
        for key in METRICS:
            values = {seed: [float(t[name][key]) for t in target_values(run).values()
                             if t.get(name, {}).get(key) is not None] for seed, run in runs.items()}
            own = [t[name].get(f"{key}_ci") for run in runs.values() for t in target_values(run).values()
                   if t.get(name, {}).get(key) is not None]
            s = summarize(values, own[0] if len(own) == 1 else None, bounds(key))
            if s:
                row[key] = s
        out[name] = row
    acc = {}
    for key in ("train_acc", "test_acc", "acc_gap"):
        values = {}
        for seed, run in runs.items():
            if run.get("targets"):
                values[seed] = [float(t[key]) for t in run["targets"].values() if t.get(key) is not None]
            elif (run.get("target") or {}).get(key) is not None:
                values[seed] = [float(run["target"][key])]
        s = summarize(values, limits=(-1.0, 1.0) if key == "acc_gap" else (0.0, 1.0))
        if s:
            acc[key] = s
    return {"attacks": out, "accuracy": acc}


def paired(a: dict, b: dict, setting_a: str, setting_b: str, metric: str = "auc") -> dict | None:
    """Entry a (setting_a) minus entry b (setting_b), target by target within each seed."""
    per_seed: dict[str, list[float]] = {}
    for seed, run_a in (a.get("seeds") or {}).items():
        run_b = (b.get("seeds") or {}).get(seed)
        if run_b is None:
            continue
        ta, tb = target_values(run_a), target_values(run_b)
        diffs = [float(ta[m][setting_a][metric]) - float(tb[m][setting_b][metric]) for m in ta if m in tb
                 and ta[m].get(setting_a, {}).get(metric) is not None and tb[m].get(setting_b, {}).get(metric) is not None]
        if diffs:
            per_seed[seed] = diffs
    return summarize(per_seed)


def _kind(e: dict) -> str:
    t = e.get("target") or {}
    if t.get("dp") or e.get("references"):
        return "other"  # DP entries and entries with other references are not part of the findings
    return "ann" if t.get("kind") == "ann" else "conv" if e.get("converted") else "snn"


def findings(study: dict) -> list[dict]:
    entries = study["entries"]
    by_kind: dict[str, list[str]] = {}
    for name, e in entries.items():
        by_kind.setdefault(_kind(e), []).append(name)
    T = {name: (entries[name].get("target") or {}).get("T") for name in entries}
    out = []

    def add(finding: int, label: str, a: str, b: str, setting_a: str, setting_b: str, sign: int, attack: str):
        d = paired(entries[a], entries[b], setting_a, setting_b)
        if d is None:
            return
        v = verdict(d["ci"][0], d["ci"][1], sign) if d["ci"] else "not resolved at 95%"
        out.append({"finding": finding, "comparison": label, "attack": attack, "metric": "auc",
                    "a": [a, setting_a], "b": [b, setting_b], **d, "verdict": v})

    for attack in FINDING_ATTACKS:
        for kind, chain in (("snn", "directly trained"), ("conv", "converted")):
            names = sorted((n for n in by_kind.get(kind, []) if T[n] is not None), key=lambda n: T[n])
            if len(names) >= 2 and T[names[-1]] != T[names[0]]:
                add(1, f"{chain}: {names[-1]} (T={T[names[-1]]}) - {names[0]} (T={T[names[0]]})",
                    names[-1], names[0], attack, attack, +1, attack)
        for name in [n for k in ("snn", "conv") for n in by_kind.get(k, [])]:
            dropouts = sorted({s for run in (entries[name].get("seeds") or {}).values()
                               for t in target_values(run).values() for s in t if s.startswith(attack + "@dropout")})
            for s in dropouts:
                add(2, f"{name}: {s.split('@')[1]} - plain", name, name, s, attack, +1, attack)
        for ann in by_kind.get("ann", [])[:1]:
            for name in [n for k in ("snn", "conv") for n in by_kind.get(k, [])]:
                add(3, f"{name} - {ann}", name, ann, attack, attack, +1, attack)
    return out


def aggregate(study: dict) -> dict:
    """The study report's `summary` ({entry: entry_summary}) and `findings`."""
    return {"summary": {name: entry_summary(e) for name, e in study["entries"].items()},
            "findings": findings(study)}


def fmt(s: dict | None, digits: int = 3) -> str:
    """`0.604 [0.581, 0.627]` for a summary, "" for none."""
    if not s:
        return ""
    ci = s.get("ci")
    return f"{s['mean']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci and not
                                         any(math.isnan(c) for c in ci) else "")
