"""audit/report.json, audit/report.md and ROC plots, written atomically.

report.json:
  attacks   {name: {auc, tpr@1%fpr, tpr@0.1%fpr, tpr@0.01%fpr, tpr@0%fpr}}  final metrics
  target    {train_acc, test_acc, acc_gap, epoch, kind, T, ...}
  history   [{epoch, train_acc, test_acc, acc_gap, attacks: {name: {...}}}]  one per audited epoch
  curves    {name: {fpr: [...], tpr: [...]}}  ROC curves, at most ~1,000 points each
  skipped   {name: reason}
  settings  the plan fingerprint, queries, references, ...
"""

from __future__ import annotations

import json
from pathlib import Path

from attacks import downsample_roc, plot_roc

from .cache import atomic_write
from .scoring import summary

COLUMNS = (("auc", "AUC"), ("tpr@1%fpr", "TPR@1%FPR"), ("tpr@0.1%fpr", "TPR@0.1%FPR"), ("tpr@0%fpr", "TPR@0%FPR"))


def curves_of(metrics: dict[str, dict], max_points: int = 1000) -> dict[str, dict]:
    out = {}
    for name, m in metrics.items():
        fpr, tpr = downsample_roc(m["fpr"], m["tpr"], max_points)
        out[name] = {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
    return out


def markdown(report: dict) -> str:
    t = report.get("target", {})
    lines = ["# Membership-inference audit", ""]
    facts = [f"{k}: {t[k]}" for k in ("kind", "arch", "T", "epoch") if t.get(k) is not None]
    if facts:
        lines += ["Target " + ", ".join(facts) + ".", ""]
    if "train_acc" in t:
        lines += [f"Target accuracy: train {t['train_acc']:.4f}, test {t['test_acc']:.4f} "
                  f"(gap {t['acc_gap']:+.4f}).", ""]
    lines += ["| attack | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, m in report["attacks"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "" for k, _ in COLUMNS) + " |")
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()) + "."]
    settings = report.get("settings", {})
    if settings:
        lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if not isinstance(v, dict)) + "."]
    lines += ["", "ROC curves: roc.png (linear and log-log axes). Numbers: report.json.", ""]
    return "\n".join(lines)


def write_report(audit_dir: str | Path, metrics: dict[str, dict], *, target: dict | None = None,
                 history: list | None = None, skipped: dict | None = None, settings: dict | None = None,
                 title: str | None = None) -> dict:
    """Write report.json, report.md and roc.png; returns the report dict."""
    audit_dir = Path(audit_dir)
    report = {
        "attacks": {name: summary(m) for name, m in metrics.items()},
        "target": target or {},
        "history": history or [],
        "skipped": skipped or {},
        "settings": settings or {},
        "curves": curves_of(metrics),
    }
    atomic_write(audit_dir / "report.json", lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
    atomic_write(audit_dir / "report.md", lambda p: p.write_text(markdown(report)))
    if metrics:
        atomic_write(audit_dir / "roc.png", lambda p: _plot(metrics, p, title))
    return report


def _plot(metrics, tmp_path: Path, title) -> None:
    # plot_roc picks the format from the suffix: draw to a .png temp name, then rename.
    png = tmp_path.with_name(tmp_path.name + ".png")
    plot_roc(metrics, png, title=title)
    png.replace(tmp_path)


def table(report: dict) -> str:
    """The report's attack table for the terminal."""
    head = f"{'attack':<34}" + "".join(f"{h:>13}" for _, h in COLUMNS)
    rows = [head, "-" * len(head)]
    for name, m in report["attacks"].items():
        rows.append(f"{name:<34}" + "".join(f"{m.get(k, float('nan')):>13.4f}" for k, _ in COLUMNS))
    t = report.get("target", {})
    if "train_acc" in t:
        rows.append(f"target accuracy: train {t['train_acc']:.4f}  test {t['test_acc']:.4f}  gap {t['acc_gap']:+.4f}")
    return "\n".join(rows)
