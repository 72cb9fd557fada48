"""PNG plots of attack results (the only file I/O in attacks/).

Figures are built on matplotlib's object API with the Agg canvas: no pyplot, so
importing or calling these never switches the caller's backend or leaks open
figures. matplotlib is imported on first use (it costs ~0.3 s).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ._checks import as_float64, as_mask


def _figure(ncols: int, width: float, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def distinct_styles(n: int) -> list[tuple[str, str]]:
    """n (colour, line style) pairs, all different: tab10 colours with solid lines, then the
    same colours dashed, dash-dotted, dotted (14 curves on tab10 alone repeat colours)."""
    styles = ["-", "--", "-.", ":"]
    return [(f"C{i % 10}", styles[(i // 10) % len(styles)]) for i in range(n)]


def plot_roc(curves: dict, path, title: str | None = None, label_metric: str = "tpr@0.1%fpr") -> Path:
    """`roc_figure` saved as one PNG."""
    return _save(roc_figure(curves, title, label_metric), path)


def roc_figure(curves: dict, title: str | None = None, label_metric: str = "tpr@0.1%fpr"):
    """Two panels: ROC on linear and on log-log axes, one line per attack, every line
    its own colour and style, the legend below the panels, one title over both.

    ``curves`` maps a name to ``(fpr, tpr)`` or to a ``roc_metrics`` dict (then the legend
    also shows its AUC and `label_metric`, TPR at 0.1% FPR by default). Curves that coincide point for point (online
    RMIA and the reference ratio, with averaged signals) are drawn once, labelled
    "rmia_online (= reference_ratio)", instead of one hiding the other.
    """
    if not curves:
        raise ValueError("curves must map at least one attack name to (fpr, tpr) or a roc_metrics dict")
    fig, (lin, log) = _figure(2, 11.0, 6.0)
    groups: list[tuple[list[str], object, object, dict | None]] = []
    for name, c in curves.items():
        fpr, tpr = (c["fpr"], c["tpr"]) if isinstance(c, dict) else c
        fpr = as_float64(f"curves[{name!r}] fpr", fpr, 1)
        tpr = as_float64(f"curves[{name!r}] tpr", tpr, 1)
        if fpr.shape != tpr.shape:
            raise ValueError(f"curves[{name!r}]: fpr and tpr must have the same length, got {tuple(fpr.shape)} "
                             f"and {tuple(tpr.shape)}")
        same = next((g for g in groups if g[1].shape == fpr.shape and torch.equal(g[1], fpr)
                     and torch.equal(g[2], tpr)), None)
        if same is not None:
            same[0].append(str(name))
        else:
            groups.append(([str(name)], fpr, tpr, c if isinstance(c, dict) else None))
    smallest = 1.0
    for (names, fpr, tpr, m), (color, style) in zip(groups, distinct_styles(len(groups))):
        label = names[0] + (f" (= {', '.join(names[1:])})" if len(names) > 1 else "")
        if m is not None and "auc" in m:
            level = label_metric.removeprefix("tpr@").removesuffix("fpr")
            label += f": AUC {m['auc']:.3f}, TPR@{level} {m.get(label_metric, float('nan')):.3f}"
        fpr, tpr = fpr.numpy(), tpr.numpy()
        lin.plot(fpr, tpr, label=label, lw=1.5, color=color, ls=style)
        keep = fpr > 0
        log.plot(fpr[keep], tpr[keep], color=color, ls=style, lw=1.5)
        if keep.any():
            smallest = min(smallest, float(fpr[keep].min()))
    for ax in (lin, log):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance" if ax is lin else None)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(alpha=0.3)
    lin.set(xlim=(0, 1), ylim=(0, 1), title="linear axes")
    log.set(xscale="log", yscale="log", xlim=(smallest / 2, 1), ylim=(smallest / 2, 1), title="log-log axes")
    # below the panels: beside them, a long legend pushed the centred title over one panel only
    fig.legend(*lin.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7)
    fig.suptitle(f"ROC: {title}" if title else "ROC")
    return fig


def plot_score_histograms(scores, is_member, path, title: str | None = None, bins: int = 50) -> Path:
    """`histogram_figure` saved as one PNG."""
    return _save(histogram_figure(scores, is_member, title, bins), path)


def histogram_figure(scores, is_member, title: str | None = None, bins: int = 50):
    """Histograms (density, shared bins) of member and non-member scores."""
    s = as_float64("scores", scores, 1)
    y = as_mask("is_member", is_member, tuple(s.shape))
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    fig, (ax,) = _figure(1, 6.0)
    lo, hi = (float(s.min()), float(s.max())) if s.numel() else (0.0, 1.0)
    edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1, dtype=torch.float64).numpy()
    for mask, name, color in ((y, "members", "tab:red"), (~y, "non-members", "tab:blue")):
        if mask.any():
            ax.hist(s[mask].numpy(), bins=edges, density=True, alpha=0.5, color=color,
                    label=f"{name} ({int(mask.sum())})")
    ax.set_xlabel("attack score (higher = member)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig
