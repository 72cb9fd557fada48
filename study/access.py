"""Leakage by access level: what an attacker learns from each view of a model, with
intervals, and three questions answered with verdicts.

An access level is what the attacker sees (design, "Signals and queries"): `label` <
`confidence` < `steps` < `spikes` < `membrane`. Every attack declares one. An attacker with a
level may run every attack of that level, so a level's value for one target is the best
(largest) value of the attacks of that level on that target, for each metric. Only the main
query setting counts (attack names without `@`: no input-dropout or latency variants), so the
comparison is one query per sample at every level. Taking the best of several attacks is a
selection: with two attacks of similar strength it adds a little to the level's value, and
the table beside it names the attack that won most often.

Numbers per entry: the mean over seeds x targets with the study's interval (a t-interval over
the per-seed means; study/verdicts.py). Paired differences subtract, target by target within a
seed, one level's value from another's on the same model: the pairing removes the model's own
vulnerability.

The three questions:
1. Does the activity leak when the output is label-only? `spikes` - `label` > 0 (for an ANN,
   `spikes` counts the active ReLU units: the same side channel on a GPU or an accelerator).
2. Do the per-step readouts leak more than the final confidence? `steps` - `confidence` > 0.
3. How far is the black box from the white box? `membrane` - `confidence`, per entry (per T).
Verdicts as the study's findings: "holds" when the 95% interval of the difference excludes 0 on
the claimed side, "reversed" on the other side, else "not resolved at 95%".
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from attacks import verdict
from audit.attacks import ACCESS_LEVELS, access_of
from core.rundir import atomic_write

from .verdicts import bounds, fmt, summarize, target_values

METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr")
HEADS = {"auc": "AUC", "tpr@1%fpr": "TPR@1%FPR", "tpr@0.1%fpr": "TPR@0.1%FPR"}
QUESTIONS = ((1, "spikes", "label", "the activity leaks when the output is label-only: spikes - label > 0"),
             (2, "steps", "confidence", "the per-step readouts leak more than the final confidence: "
                                        "steps - confidence > 0"),
             (3, "membrane", "confidence", "the white box leaks more than the black box: membrane - confidence > 0"))


def level_of(name: str, row: dict) -> str | None:
    """The access level of a report row: its own `access`, else the registry's."""
    return row.get("access") or access_of(name)


def best_by_level(attacks: dict, metric: str) -> dict[str, tuple[float, str]]:
    """{level: (the best value of `metric` over the level's attacks, that attack)} for one
    target's rows, main query setting only (names without '@')."""
    out: dict[str, tuple[float, str]] = {}
    for name, row in attacks.items():
        if "@" in name or not isinstance(row, dict) or row.get(metric) is None:
            continue
        value = float(row[metric])
        if math.isnan(value):
            continue
        level = level_of(name, row)
        if level in ACCESS_LEVELS and (level not in out or value > out[level][0]):
            out[level] = (value, name)
    return out


def entry_levels(entry: dict) -> dict:
    """{level: {metric: summary, "attacks": Counter of the winning attacks}} for one entry."""
    runs = entry.get("seeds") or {}
    out: dict[str, dict] = {}
    for metric in METRICS:
        per_level: dict[str, dict[str, list[float]]] = {}
        winners: dict[str, Counter] = {}
        for seed, run in runs.items():
            for attacks in target_values(run or {}).values():
                for level, (value, name) in best_by_level(attacks, metric).items():
                    per_level.setdefault(level, {}).setdefault(seed, []).append(value)
                    winners.setdefault(level, Counter())[name] += 1
        for level, values in per_level.items():
            s = summarize(values, limits=bounds(metric))
            if s:
                out.setdefault(level, {})[metric] = s
                if metric == "auc":
                    out[level]["attacks"] = dict(winners[level].most_common())
    return dict(sorted(out.items(), key=lambda kv: ACCESS_LEVELS.index(kv[0])))


def paired_levels(entry: dict, level_a: str, level_b: str, metric: str = "auc") -> dict | None:
    """level_a minus level_b on the same model, target by target within each seed."""
    per_seed: dict[str, list[float]] = {}
    for seed, run in (entry.get("seeds") or {}).items():
        diffs = []
        for attacks in target_values(run or {}).values():
            best = best_by_level(attacks, metric)
            if level_a in best and level_b in best:
                diffs.append(best[level_a][0] - best[level_b][0])
        if diffs:
            per_seed[seed] = diffs
    return summarize(per_seed)


def access_summary(study: dict) -> dict | None:
    """{"levels": {entry: entry_levels}, "differences": [...], "questions": [...]}, or None when
    no entry has an attack above `confidence` or below it (nothing to compare)."""
    entries = study["entries"]
    levels = {name: entry_levels(e) for name, e in entries.items()}
    seen = {lv for v in levels.values() for lv in v}
    if not seen - {"confidence"}:
        return None
    differences = []
    for name, e in entries.items():
        for level in ACCESS_LEVELS:
            if level == "confidence" or level not in levels[name] or "confidence" not in levels[name]:
                continue
            for metric in METRICS:
                d = paired_levels(e, level, "confidence", metric)
                if d is not None:
                    v = verdict(d["ci"][0], d["ci"][1], +1) if d["ci"] else "not resolved at 95%"
                    differences.append({"entry": name, "level": level, "metric": metric, **d, "verdict": v})
    questions = []
    for number, a, b, claim in QUESTIONS:
        for name, e in entries.items():
            d = paired_levels(e, a, b, "auc")
            if d is None:
                continue
            v = verdict(d["ci"][0], d["ci"][1], +1) if d["ci"] else "not resolved at 95%"
            t = e.get("target") or {}
            questions.append({"question": number, "claim": claim, "entry": name, "kind": t.get("kind"),
                              "T": t.get("T"), "a": a, "b": b, "metric": "auc", **d, "verdict": v})
    missing = {name: [lv for lv in ACCESS_LEVELS if lv not in levels[name]] for name in entries}
    return {"levels": levels, "differences": differences, "questions": questions,
            "missing": {k: v for k, v in missing.items() if v}}


def markdown(study: dict) -> list[str]:
    """The access-level section of a study's report.md (empty without one)."""
    acc = study.get("access")
    if not acc:
        return []
    lines = ["## Leakage by access level", "",
             "Each level's value for one target is the best of that level's attacks (main query setting); the "
             "mean and 95% interval over seeds x targets. `best` names the attack that won most often.", ""]
    head = ["entry", "level"] + [HEADS[m] for m in METRICS] + ["best"]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, levels in acc["levels"].items():
        for level, row in levels.items():
            best = ", ".join(f"{a} ({n})" for a, n in list(row.get("attacks", {}).items())[:2])
            lines.append("| " + " | ".join([name, level] + [fmt(row.get(m)) or "n/a" for m in METRICS] + [best]) + " |")
    lines.append("")
    if acc.get("missing"):
        lines += ["Levels a model does not have (no attack of that level could run on it): "
                  + "; ".join(f"{k}: {', '.join(v)}" for k, v in acc["missing"].items()) + ".", ""]
    if acc["questions"]:
        lines += ["### Three questions", "",
                  "Paired differences in AUC on the same model, target by target within a seed. Verdict: holds / "
                  "reversed when the 95% interval excludes 0 on the claimed / other side.", "",
                  "| question | entry | difference in AUC [95% CI] | seeds | verdict |", "|---|---|---|---|---|"]
        for q in acc["questions"]:
            lines.append(f"| {q['question']}: {q['a']} - {q['b']} | {q['entry']} | {fmt(q)} | {q['n_seeds']} | "
                         f"{q['verdict']} |")
        lines.append("")
        lines += [f"{n}. {claim}." for n, _, _, claim in QUESTIONS] + [""]
    if acc["differences"]:
        lines += ["### Each level against `confidence`", "",
                  "| entry | level | metric | difference [95% CI] | verdict |", "|---|---|---|---|---|"]
        for d in acc["differences"]:
            lines.append(f"| {d['entry']} | {d['level']} | {HEADS[d['metric']]} | {fmt(d)} | {d['verdict']} |")
        lines.append("")
    return lines


def access_figure(study: dict):
    """One panel per metric (AUC, TPR@1%FPR): per entry, one bar per access level with its 95%
    interval; 0.5 (AUC) and the FPR (TPR) mark chance. Matplotlib's object API."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    acc = study["access"]
    names = list(acc["levels"])
    levels = [lv for lv in ACCESS_LEVELS if any(lv in acc["levels"][n] for n in names)]
    fig = Figure(figsize=(max(6.0, 1.3 * len(names) * max(1, len(levels)) / 2.5), 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, squeeze=False)
    width = 0.8 / max(1, len(levels))
    for ax, (metric, chance) in zip(axes[:, 0], (("auc", 0.5), ("tpr@1%fpr", 0.01))):
        for j, level in enumerate(levels):
            xs, ys, lo, hi = [], [], [], []
            for i, name in enumerate(names):
                s = acc["levels"][name].get(level, {}).get(metric)
                if not s:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(s["mean"])
                ci = s.get("ci") or [s["mean"], s["mean"]]
                lo.append(max(0.0, s["mean"] - ci[0]))  # max: rounding when every value is equal
                hi.append(max(0.0, ci[1] - s["mean"]))
            ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, color=f"C{ACCESS_LEVELS.index(level)}",
                   label=level)
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel(HEADS[metric])
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(title="access level", fontsize=7, ncols=len(levels))
    fig.suptitle(f"Study {study['name']}: leakage by access level, mean and 95% interval")
    return fig


def plot_access(study: dict, path: Path) -> None:
    fig = access_figure(study)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
