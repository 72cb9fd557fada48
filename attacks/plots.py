"""PNG plots of attack results (the only file I/O in attacks/).

Figures are built on matplotlib's object API with the Agg canvas: no pyplot, so
importing or calling these never switches the caller's backend or leaks open
figures. matplotlib is imported on first use (it costs ~0.3 s).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ._checks import as_float64, as_mask


def _figure(ncols: int, width: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_roc(curves: dict, path, title: str | None = None) -> Path:
    """One PNG, two panels: ROC on linear and on log-log axes, one line per attack.

    ``curves`` maps a name to ``(fpr, tpr)`` or to a ``roc_metrics`` dict (then
    the legend also shows its AUC and TPR at 0.1% FPR).
    """
    if not curves:
        raise ValueError("curves must map at least one attack name to (fpr, tpr) or a roc_metrics dict")
    fig, (lin, log) = _figure(2, 10.5)
    smallest = 1.0
    for name, c in curves.items():
        label = str(name)
        if isinstance(c, dict):
            fpr, tpr = c["fpr"], c["tpr"]
            if "auc" in c:
                label += f" (AUC {c['auc']:.3f}, TPR@0.1% {c.get('tpr@0.1%fpr', float('nan')):.3f})"
        else:
            fpr, tpr = c
        fpr = as_float64(f"curves[{name!r}] fpr", fpr, 1).numpy()
        tpr = as_float64(f"curves[{name!r}] tpr", tpr, 1).numpy()
        if fpr.shape != tpr.shape:
            raise ValueError(f"curves[{name!r}]: fpr and tpr must have the same length, got {fpr.shape} and {tpr.shape}")
        (line,) = lin.plot(fpr, tpr, label=label, lw=1.5)
        keep = fpr > 0
        log.plot(fpr[keep], tpr[keep], color=line.get_color(), lw=1.5)
        if keep.any():
            smallest = min(smallest, float(fpr[keep].min()))
    for ax in (lin, log):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(alpha=0.3)
    lin.set(xlim=(0, 1), ylim=(0, 1), title="ROC")
    log.set(xscale="log", yscale="log", xlim=(smallest / 2, 1), ylim=(smallest / 2, 1), title="ROC (log-log)")
    lin.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_score_histograms(scores, is_member, path, title: str | None = None, bins: int = 50) -> Path:
    """Histograms (density, shared bins) of member and non-member scores, one PNG."""
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
    return _save(fig, path)
