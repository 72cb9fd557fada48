"""audit/report.json, audit/report.md and ROC plots, written atomically.

The layout of report.json is documented once, in docs/report.md ("report.json"), and
tests/test_report_layout.py checks that page against what this writer writes. `target.epoch`
is Lightning's 0-based index of the last audited epoch; report.md and the plots count from 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from attacks import downsample_roc, plot_roc
from core.rundir import ReportLock, atomic_write

from .scoring import below_resolution, summary

LATENCY_METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr")  # each only where measurable
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
    facts = [f"{k}: {t[k]}" for k in ("kind", "arch", "T", "precision") if t.get(k) is not None]
    if t.get("epoch") is not None:  # report.json keeps Lightning's 0-based index; people count from 1
        facts.append(f"after epoch {t['epoch'] + 1}")
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
        white = dp.get("audit_canaries")
        if white:
            lines += [f"White-box canary audit of the DP-SGD implementation: {white['count']} Dirac gradient canaries, "
                      f"{white['correct']} of {white['guesses']} guesses right, eps_lb {white['eps_lb']:.2f} at 95% "
                      f"confidence, delta {white['delta']:g} (eps_lb / epsilon = "
                      f"{white['eps_lb'] / dp['epsilon'] if dp['epsilon'] else float('nan'):.2f}).", ""]
    if t.get("distinct_confidences"):
        lines += ["Distinct target confidences / N (low = many ties): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in t["distinct_confidences"].items()) + ".", ""]
    for warning in report.get("warnings", []):
        lines += [f"**Warning: {warning}.**", ""]
    na = report.get("below_resolution", {})
    columns = [*COLUMNS, *((("eps_lb", "eps_lb"),) if any("eps_lb" in m for m in report["attacks"].values()) else ())]
    if any(k.endswith("_ci") for m in report["attacks"].values() for k in m):
        lines += [f"Model {report.get('settings', {}).get('target_index', 0)} as the target; 95% intervals in "
                  "brackets (AUC: DeLong; TPR: stratified bootstrap).", ""]
    lines += ["| attack | " + " | ".join(h for _, h in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, m in report["attacks"].items():
        lines.append(f"| {name} | " + " | ".join(cell(m, k, na) for k, _ in columns) + " |")
    across = report.get("across_targets")
    if across:
        n = max((v["n"] for row in across.values() for v in row.values()), default=0)
        keys = [k for k in ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "eps_lb") if any(k in row for row in across.values())]
        lines += ["", f"## Across the {n} targets", "",
                  f"Every model of the run audited as the target, the others as its references: mean and 95% "
                  f"interval (Student t over the {n} targets).", "",
                  "| attack | " + " | ".join(dict(COLUMNS).get(k, k) for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name, row in across.items():
            lines.append(f"| {name} | " + " | ".join(mean_cell(row.get(k)) for k in keys) + " |")
    if report.get("eps_lb"):
        lines += ["", f"eps_lb: {report['eps_lb']['assumptions']}"]
    canary = report.get("canary_audit")
    if canary:
        lines += ["", f"Canary audit (black box): {canary['count']} {canary['kind']} canaries, each in the target's "
                  f"training set with probability 1/2, scored by the target's confidence on the canary label; "
                  f"{canary['correct']} of {canary['guesses']} guesses right (k+ {canary['k_plus']}, k- "
                  f"{canary['k_minus']}), eps_lb {canary['eps_lb']:.2f} at 95% confidence, delta {canary['delta']:g}. "
                  "This final value is the 95% bound; the per-epoch values in `history` (`canary_eps_lb`) are "
                  "each valid for their epoch alone, not their maximum."]
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
        across_latency = all("across_targets" in v for v in report["latency"].values())
        lines[-1:] = ["", f"Leakage against latency t = {', '.join(map(str, ts))} (the SNN's readout averaged over "
                      "its first t steps): latency.png (AUC and TPR@0.1%FPR against t"
                      + (", mean over the targets with 95% intervals" if across_latency else "")
                      + "), report.json `latency`.", ""]
    return "\n".join(lines)


def cell(m: dict, key: str, na: dict[str, str]) -> str:
    """A metric for the Markdown table: its value and 95% interval, or why it cannot be measured."""
    if key in na:
        return f"n/a ({na[key]})"
    if m.get(key) is None:
        return ""
    ci = m.get(f"{key}_ci")
    digits = 2 if key == "eps_lb" else 3 if ci else 4
    return f"{m[key]:.{digits}f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def mean_cell(v: dict | None) -> str:
    if not v:
        return ""
    return f"{v['mean']:.3f}" + (f" [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" if v.get("ci") else "")


def table_text(report: dict, where: Path) -> str:
    """What the terminal shows at the end of an audit: the table and where the report is. A
    renderer: whoever ran the audit decides whether to print it (`run.py` does; a study's
    entries do not, the study prints its own table)."""
    return "\n" + table(report) + f"\nreport: {where}"


def write_report(audit_dir: str | Path, metrics: dict[str, dict], *, attacks: dict | None = None,
                 target: dict | None = None, history: list | None = None, skipped: dict | None = None,
                 settings: dict | None = None, title: str | None = None, latency: dict[str, dict] | None = None,
                 num_nonmembers: int | None = None, extra: dict | None = None) -> dict:
    """Write report.json, report.md and roc.png; returns the report dict. With `latency`
    ({setting: {"t": [...], "auc": [...], "tpr@0.1%fpr": [...]}}) also latency.png and the
    report's `latency` key; without it a latency.png of an earlier audit is removed, so
    that the directory never shows a plot its report.json does not hold."""
    audit_dir = Path(audit_dir)
    na = below_resolution(num_nonmembers)
    report = {
        "attacks": attacks if attacks is not None else {name: summary(m, num_nonmembers=num_nonmembers)
                                                        for name, m in metrics.items()},
        # metrics this audit cannot measure (null above): TPR at an FPR below 1 / N_out
        "below_resolution": na,
        "target": target or {},
        "history": history or [],
        "skipped": skipped or {},
        "settings": settings or {},
        "curves": curves_of(metrics),
    }
    if latency:
        report["latency"] = latency
    report.update(extra or {})
    with ReportLock(audit_dir):  # another process writing this folder finishes its set first
        atomic_write(audit_dir / "report.json", lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
        atomic_write(audit_dir / "report.md", lambda p: p.write_text(markdown(report)))
        if metrics:
            label = "tpr@0.1%fpr" if "tpr@0.1%fpr" not in na else "tpr@1%fpr"
            atomic_write(audit_dir / "roc.png", lambda p: _plot(metrics, p, title, label))
        if latency:
            atomic_write(audit_dir / "latency.png", lambda p: plot_latency(latency, p, title))
        else:
            (audit_dir / "latency.png").unlink(missing_ok=True)
    return report


def plot_latency(series: dict[str, dict], path: Path, title: str | None = None) -> None:
    """`latency_figure` saved as a PNG (whatever the suffix)."""
    latency_figure(series, title).savefig(path, dpi=120, format="png")


def latency_figure(series: dict[str, dict], title: str | None = None):
    """Two panels, AUC and the lowest-FPR TPR this audit can measure (0.1%, else 1%) against
    the latency t, one line per attack setting: a colour per attack, a line style per query
    strategy; settings whose lines coincide are drawn once and named together; the legend
    below the panels, one title over both. A series with `across_targets` (several targets
    audited) is drawn as the mean over the targets with its 95% error bars, otherwise as the
    main target's values. Matplotlib's object API on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # fewer than 100 non-members measure no TPR at 1% FPR either: then AUC alone
    low = next((k for k in ("tpr@0.1%fpr", "tpr@1%fpr") if all(k in v for v in series.values())), None)
    keys = ("auc", low) if low else ("auc",)
    fig = Figure(figsize=(11.0 if low else 6.5, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    ts = sorted({t for v in series.values() for t in v["t"]})
    attacks = list(dict.fromkeys(name.split("@")[0] for name in series))
    queries = list(dict.fromkeys(name.partition("@")[2] for name in series))
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "x"]
    across = {name: v["across_targets"] for name, v in series.items()
              if all(k in v.get("across_targets", {}) for k in keys)}
    if len(across) < len(series):
        across = {}  # one kind of point per plot: all means over the targets, or all main-target values

    ns = sorted({v["n"] for v in across.values()})

    def ys(name: str, key: str) -> list[float]:
        return across[name][key]["mean"] if across else series[name][key]

    # identical series (rmia_online and reference_ratio) drawn once; equal to 6 decimals counts as
    # identical, which no plot can tell apart (with query masks the two AUCs can differ by ~1e-7,
    # one tied pair of 4 million ordered differently)
    drawn: dict[tuple, list[str]] = {}
    for name, v in series.items():
        drawn.setdefault((tuple(v["t"]), *(tuple(round(y, 6) for y in ys(name, k)) for k in keys)), []).append(name)
    for ax, key in zip(axes, keys):
        for i, names in enumerate(drawn.values()):
            name, v = names[0], series[names[0]]
            a, q = attacks.index(name.split("@")[0]), queries.index(name.partition("@")[2])
            label = name + (f" (= {', '.join(names[1:])})" if len(names) > 1 else "")
            if across and len(ns) > 1:
                label += f", {across[name]['n']} target" + ("s" if across[name]["n"] > 1 else "")
            style = dict(color=f"C{a % 10}", ls=styles[q % len(styles)], marker=markers[q % len(markers)], label=label)
            if across:  # error bars of series at the same t dodged apart
                pts = [bar_point(t, m, ci) for t, m, ci in zip(v["t"], ys(name, key), across[name][key]["ci"])]
                dodged_errorbar(ax, pts, i, len(drawn), **style)
            else:
                ax.plot(v["t"], ys(name, key), **style)
        chance = 0.5 if key == "auc" else {"tpr@0.1%fpr": 0.001, "tpr@1%fpr": 0.01}[key]  # TPR = FPR
        ax.axhline(chance, color="grey", lw=0.8, ls="--")
        ax.set_xticks(ts)
        ax.set_xlabel("latency t (readout averaged over the first t steps)")
        ax.set_ylabel({"auc": "attack AUC", "tpr@0.1%fpr": "TPR at 0.1% FPR", "tpr@1%fpr": "TPR at 1% FPR"}[key])
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=7)
    head = f"Leakage against latency: {title}" if title else "Leakage against latency"
    if across:
        head += f"\nmean over {ns[0] if len(ns) == 1 else f'{ns[0]} to {ns[-1]}'} targets, 95% t-intervals"
    fig.suptitle(head)
    return fig


def bar_point(x, mean: float, ci) -> tuple:
    """(x, mean, lo, hi) for `dodged_errorbar`; a number without an interval (ci None) has no bar."""
    lo, hi = ci if ci else (mean, mean)
    return x, mean, lo, hi


def dodged_errorbar(ax, pts: list, i: int, n: int, **kw) -> None:
    """Error bars for pts = [(x, mean, lo, hi), ...], drawn as series i of n a few points left or
    right of their x so that bars at the same x stay apart; the data (and what a test reads back)
    keep their exact x. The axes' limits are widened by hand: matplotlib's autoscaling skips
    artists drawn with a transform of their own."""
    from matplotlib.transforms import ScaledTranslation

    shift = ScaledTranslation((i - (n - 1) / 2) * 2.5 / 72, 0, ax.figure.dpi_scale_trans)
    ax.errorbar([q[0] for q in pts], [q[1] for q in pts],
                yerr=[[q[1] - q[2] for q in pts], [q[3] - q[1] for q in pts]], capsize=3,
                transform=ax.transData + shift, **kw)
    ax.update_datalim([(q[0], q[2]) for q in pts] + [(q[0], q[3]) for q in pts])
    ax.autoscale_view()


ROC_CURVES_MAX = 14


def roc_selection(metrics: dict) -> dict:
    """The curves roc.png shows: the settings at the trained latency (no `T<t>` suffix;
    latency.png covers the others), at most ROC_CURVES_MAX of them: 56 curves of a
    query x latency grid made an unreadable plot."""
    base = {n: m for n, m in metrics.items() if not re.search(r"[@,]T\d+$", n)} or metrics
    return dict(list(base.items())[:ROC_CURVES_MAX])


def _plot(metrics, tmp_path: Path, title, label_metric: str) -> None:
    # plot_roc picks the format from the suffix: draw to a .png temp name, then rename.
    png = tmp_path.with_name(tmp_path.name + ".png")
    plot_roc(roc_selection(metrics), png, title=title, label_metric=label_metric)
    png.replace(tmp_path)


def table(report: dict) -> str:
    """The report's attack table for the terminal: AUC with its 95% interval, TPR at 1% and
    0.1% FPR ("n/a" where the audit cannot measure it), TPR at 0% FPR and eps_lb; then the
    mean AUC across targets when every model took its turn."""
    na = report.get("below_resolution", {})
    width = max([len("attack"), *map(len, report["attacks"])]) + 2
    has_eps = any("eps_lb" in m for m in report["attacks"].values())
    head = f"{'attack':<{width}}{'AUC [95% CI]':>22}" + "".join(f"{h:>13}" for _, h in COLUMNS[1:]) \
        + (f"{'eps_lb':>8}" if has_eps else "")
    rows = [head, "-" * len(head)]
    for name, m in report["attacks"].items():
        ci = m.get("auc_ci")
        auc = f"{m['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{m.get('auc', float('nan')):.4f}"
        rest = "".join(f"{'n/a':>13}" if k in na or m.get(k) is None else f"{m[k]:>13.4f}" for k, _ in COLUMNS[1:])
        rows.append(f"{name:<{width}}{auc:>22}{rest}" + (f"{m['eps_lb']:>8.2f}" if has_eps and "eps_lb" in m else ""))
    if na:
        rows.append("n/a: " + "; ".join(f"{k} ({why})" for k, why in na.items()) + ": too few non-members to measure")
    across = report.get("across_targets")
    if across:
        n = max(row["auc"]["n"] for row in across.values() if "auc" in row)
        rows.append(f"every model as the target: mean AUC over {n} targets [95% CI]")
        for name, row in across.items():
            if "auc" in row:
                ci = row["auc"].get("ci")
                rows.append(f"  {name:<{width}}{row['auc']['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    for warning in report.get("warnings", []):
        rows.append(f"WARNING: {warning}")
    t = report.get("target", {})
    if "train_acc" in t:
        rows.append(f"target accuracy: train {t['train_acc']:.4f}  test {t['test_acc']:.4f}  gap {t['acc_gap']:+.4f}")
    return "\n".join(rows)