"""audit/report.json, audit/report.md and ROC plots, written atomically.

report.json:
  attacks   {name: {auc, tpr@1%fpr, tpr@0.1%fpr, tpr@0.01%fpr, tpr@0%fpr}}  final metrics
  target    {train_acc, test_acc, acc_gap, epoch, kind, T, dp, ...}; dp: null, or DP-SGD's {epsilon, delta,
            noise_multiplier, sample_rate, steps, accountant, max_grad_norm, target_epsilon, ...}
  history   [{epoch, train_acc, test_acc, acc_gap, attacks: {name: {...}}}]  one per audited epoch
  curves    {name: {fpr: [...], tpr: [...]}}  ROC curves, at most ~1,000 points each
  skipped   {name: reason}
  settings  the plan fingerprint, queries, references, ...
  latency   {setting: {t: [...], auc: [...], tpr@0.1%fpr: [...]}}  only when an audit covered 2+ SNN
            latencies; the setting is the attack name without its T part. Plotted in latency.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from attacks import downsample_roc, plot_roc
from core.rundir import atomic_write

from .scoring import summary

LATENCY_METRICS = ("auc", "tpr@0.1%fpr")
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
    if t.get("dp"):
        dp = t["dp"]
        target = f", target {dp['target_epsilon']:g}" if dp.get("target_epsilon") is not None else ""
        lines += [f"Trained with DP-SGD: epsilon {dp['epsilon']:.4g} at delta {dp['delta']:g} ({dp['accountant']} "
                  f"accountant{target}), noise multiplier {dp['noise_multiplier']:.4g}, max grad norm "
                  f"{dp['max_grad_norm']:g}, sample rate {dp['sample_rate']:.4g}, {dp['steps']} steps; "
                  f"epsilon covers {dp.get('scope', 'all training')}.", ""]
    if t.get("distinct_confidences"):
        lines += ["Distinct target confidences / N (low = many ties): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in t["distinct_confidences"].items()) + ".", ""]
    lines += ["| attack | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, m in report["attacks"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "" for k, _ in COLUMNS) + " |")
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()) + "."]
    settings = report.get("settings", {})
    if settings:
        lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if not isinstance(v, dict)) + "."]
    shown = len(roc_selection(report["attacks"]))
    note = "" if shown == len(report["attacks"]) else f" ({shown} of {len(report['attacks'])} settings: the trained latency)"
    lines += ["", f"ROC curves: roc.png (linear and log-log axes){note}; every curve is in report.json.", ""]
    if report.get("latency"):
        ts = sorted({t for v in report["latency"].values() for t in v["t"]})
        lines[-1:] = ["", f"Leakage against latency t = {', '.join(map(str, ts))} (the SNN's readout averaged over "
                      "its first t steps): latency.png (AUC and TPR@0.1%FPR against t), report.json `latency`.", ""]
    return "\n".join(lines)


def write_report(audit_dir: str | Path, metrics: dict[str, dict], *, target: dict | None = None,
                 history: list | None = None, skipped: dict | None = None, settings: dict | None = None,
                 title: str | None = None, latency: dict[str, dict] | None = None) -> dict:
    """Write report.json, report.md and roc.png; returns the report dict. With `latency`
    ({setting: {"t": [...], "auc": [...], "tpr@0.1%fpr": [...]}}) also latency.png and the
    report's `latency` key; without it a latency.png of an earlier audit is removed, so
    that the directory never shows a plot its report.json does not hold."""
    audit_dir = Path(audit_dir)
    report = {
        "attacks": {name: summary(m) for name, m in metrics.items()},
        "target": target or {},
        "history": history or [],
        "skipped": skipped or {},
        "settings": settings or {},
        "curves": curves_of(metrics),
    }
    if latency:
        report["latency"] = latency
    atomic_write(audit_dir / "report.json", lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
    atomic_write(audit_dir / "report.md", lambda p: p.write_text(markdown(report)))
    if metrics:
        atomic_write(audit_dir / "roc.png", lambda p: _plot(metrics, p, title))
    if latency:
        atomic_write(audit_dir / "latency.png", lambda p: plot_latency(latency, p, title))
    else:
        (audit_dir / "latency.png").unlink(missing_ok=True)
    return report


def plot_latency(series: dict[str, dict], path: Path, title: str | None = None) -> None:
    """Two panels, AUC and TPR@0.1%FPR against the latency t, one line per attack setting:
    a colour per attack, a line style per query strategy, the legend beside the panels.
    Matplotlib's object API on the Agg canvas (no pyplot state); PNG whatever the suffix."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(LATENCY_METRICS), squeeze=False)[0]
    ts = sorted({t for v in series.values() for t in v["t"]})
    attacks = list(dict.fromkeys(name.split("@")[0] for name in series))
    queries = list(dict.fromkeys(name.partition("@")[2] for name in series))
    colors = [f"C{i % 10}" for i in range(len(attacks))]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "x"]
    for ax, key in zip(axes, LATENCY_METRICS):
        for name, v in series.items():
            a, q = attacks.index(name.split("@")[0]), queries.index(name.partition("@")[2])
            ax.plot(v["t"], v[key], color=colors[a], ls=styles[q % len(styles)], marker=markers[q % len(markers)],
                    label=name)
        if key == "auc":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        else:
            ax.axhline(0.001, color="grey", lw=0.8, ls="--")  # chance: TPR = FPR
        ax.set_xticks(ts)
        ax.set_xlabel("latency t (readout averaged over the first t steps)")
        ax.set_ylabel({"auc": "attack AUC", "tpr@0.1%fpr": "TPR at 0.1% FPR"}[key])
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120, format="png")


ROC_CURVES_MAX = 14


def roc_selection(metrics: dict) -> dict:
    """The curves roc.png shows: the settings at the trained latency (no `T<t>` suffix;
    latency.png covers the others), at most ROC_CURVES_MAX of them: 56 curves of a
    query x latency grid made an unreadable plot."""
    base = {n: m for n, m in metrics.items() if not re.search(r"[@,]T\d+$", n)} or metrics
    return dict(list(base.items())[:ROC_CURVES_MAX])


def _plot(metrics, tmp_path: Path, title) -> None:
    # plot_roc picks the format from the suffix: draw to a .png temp name, then rename.
    png = tmp_path.with_name(tmp_path.name + ".png")
    plot_roc(roc_selection(metrics), png, title=title)
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
