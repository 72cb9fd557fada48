"""Attacks against attacks: the paired differences a study's `compare` asks for, with
verdicts, and what each attack cost.

`compare: [[qmia, rmia_offline], [trajectory, lira_online]]` in a study file asks, for every
entry, whether the first attack leaks more than the second on the same models: the
difference of their values target by target within a seed (the pairing removes each model's
own vulnerability), summarised like the study's findings (a t-interval over the per-seed
means; study/verdicts.py). Neither side is claimed in advance, so the verdict names the
stronger attack when the 95% interval excludes 0, else "not resolved at 95%".

The costs are the audits' counted costs (report.json `attack_costs`: models trained for the
attack besides the target, and inference passes of one model over the audit set and the
population with one query), read off the first seed's main target; and the seconds an
attack's auxiliary model took to train where the attack reports them (QMIA's
`attack_details`). They are counts, not wall time: a model's training time depends on the
machine, and benchmarks/ measures it.
"""

from __future__ import annotations

from attacks import verdict

from .verdicts import fmt, paired

METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr")
HEADS = {"auc": "AUC", "tpr@1%fpr": "TPR@1%FPR", "tpr@0.1%fpr": "TPR@0.1%FPR"}


def reading(v: str, a: str, b: str) -> str:
    """The verdict of `a - b` in words: which attack is stronger, or not resolved."""
    return f"{a} stronger" if v == "holds" else f"{b} stronger" if v == "reversed" else v


def attack_comparisons(study: dict, pairs: list[list[str]]) -> list[dict]:
    """[{entry, a, b, metric, mean, ci, n_seeds, n_values, basis, verdict, reading}] for each
    pair, entry and metric with values on both sides."""
    out = []
    for a, b in pairs:
        for name, e in study["entries"].items():
            for metric in METRICS:
                d = paired(e, e, a, b, metric)
                if d is None:
                    continue
                v = verdict(d["ci"][0], d["ci"][1], +1) if d["ci"] else "not resolved at 95%"
                out.append({"entry": name, "a": a, "b": b, "metric": metric, **d, "verdict": v,
                            "reading": reading(v, a, b)})
    return out


def attack_costs(study: dict, attacks: list[str]) -> dict[str, dict]:
    """{entry: {attack: {"models_trained", "inference_passes"[, "aux_seconds"]}}} from the first
    seed's main target."""
    out: dict[str, dict] = {}
    for name, e in study["entries"].items():
        runs = e.get("seeds") or {}
        run = next(iter(runs.values()), None) or {}
        costs = run.get("attack_costs") or {}
        details = run.get("attack_details") or {}
        row = {}
        for attack in attacks:
            if attack not in costs:
                continue
            row[attack] = dict(costs[attack])
            seconds = [d.get("seconds") for d in (details.get(attack) or {}).values() if isinstance(d, dict)]
            if seconds and None not in seconds:
                row[attack]["aux_seconds"] = float(sum(seconds))
        if row:
            out[name] = row
    return out


def missing_pairs(study: dict, pairs: list[list[str]]) -> list[str]:
    """The attacks of `pairs` that no entry has a value for (a typo, or an attack the audits did not run)."""
    seen = {setting for e in study["entries"].values() for run in (e.get("seeds") or {}).values()
            for t in ((run or {}).get("targets") or {"0": {"attacks": (run or {}).get("attacks") or {}}}).values()
            for setting in (t.get("attacks") or {})}
    return sorted({x for pair in pairs for x in pair} - seen)


def summary(study: dict, pairs: list[list[str]] | None) -> dict | None:
    """The study report's `attack_comparisons`, or None when the study has no `compare`."""
    if not pairs:
        return None
    attacks = list(dict.fromkeys(x for pair in pairs for x in pair))
    return {"pairs": pairs, "differences": attack_comparisons(study, pairs),
            "costs": attack_costs(study, attacks), "missing": missing_pairs(study, pairs)}


def markdown(study: dict) -> list[str]:
    """The attack-comparison section of a study's report.md (empty without `compare`)."""
    comp = study.get("attack_comparisons")
    if not comp:
        return []
    lines = ["## Attacks compared", "",
             "Paired differences (first attack minus second) on the same models, target by target within a seed; "
             "mean and 95% interval over seeds x targets. The verdict names the stronger attack when the interval "
             "excludes 0.", ""]
    head = ["entry", "comparison"] + [HEADS[m] for m in METRICS]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    cells: dict[tuple, dict] = {}
    for d in comp["differences"]:
        cells[d["entry"], d["a"], d["b"], d["metric"]] = d
    for name in study["entries"]:
        for a, b in comp["pairs"]:
            row = [cells.get((name, a, b, m)) for m in METRICS]
            if not any(row):
                continue
            lines.append("| " + " | ".join([name, f"{a} - {b}"] + [
                f"{fmt(d)} ({d['reading']})" if d else "n/a" for d in row]) + " |")
    lines.append("")
    if comp.get("missing"):
        lines += [f"No entry has values for {', '.join(comp['missing'])}: check the names in `compare` against "
                  "the attacks the audits ran (`audit_args`).", ""]
    if comp["costs"]:
        attacks = list(dict.fromkeys(a for row in comp["costs"].values() for a in row))
        lines += ["### What each attack cost", "",
                  "Per target (the first seed's main target): models trained for the attack besides the target "
                  "(references, auxiliary models), and inference passes (one model over the audit set and the "
                  "population, one query). Seconds: the auxiliary model's own training, where the attack "
                  "reports it (measured on this run's machine, with whatever else ran).", ""]
        head = ["entry"] + [f"{a} {h}" for a in attacks for h in ("models", "passes")]
        has_seconds = [a for a in attacks if any("aux_seconds" in row.get(a, {}) for row in comp["costs"].values())]
        head += [f"{a} seconds" for a in has_seconds]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name, row in comp["costs"].items():
            cells_ = [name]
            for a in attacks:
                c = row.get(a)
                cells_ += [str(c["models_trained"]), str(c["inference_passes"])] if c else ["n/a", "n/a"]
            cells_ += [f"{row[a]['aux_seconds']:.0f}" if "aux_seconds" in row.get(a, {}) else "n/a" for a in has_seconds]
            lines.append("| " + " | ".join(cells_) + " |")
        lines.append("")
    return lines
