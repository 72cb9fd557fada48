"""Exact ROC metrics for membership scores.

The ROC is computed here by sorting in float64 and counting integers, not with
torchmetrics: torchmetrics passes scores outside [0, 1] through a sigmoid, and
in float32 sigmoid(30) and sigmoid(40) are both 1.0, so two LiRA scores that
differ would tie. (For scores in [0, 1] the tests check agreement with
torchmetrics' exact ROC.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import as_float64, as_mask

FPR_LEVELS = {"tpr@1%fpr": 1e-2, "tpr@0.1%fpr": 1e-3, "tpr@0.01%fpr": 1e-4, "tpr@0%fpr": 0.0}


def roc_metrics(scores, is_member) -> dict:
    """AUC, TPR at low FPR and the ROC curve of ``scores`` (higher = member).

    - ``auc``: exact, ties count one half: (#{member > non-member} + 1/2
      #{member = non-member}) / (#members x #non-members), as the trapezoid
      area of the ROC over tie groups, in integer arithmetic;
    - ``tpr@1%fpr``, ``tpr@0.1%fpr``, ``tpr@0.01%fpr``, ``tpr@0%fpr``: the largest
      TPR among ROC points whose FPR <= the level;
    - ``fpr``, ``tpr``, ``thresholds``: float64 tensors, one point per distinct
      score (predict member when score >= threshold) after the point (0, 0) at
      threshold +inf.

    The TPR values are python floats. With N_out non-members the smallest
    non-zero FPR is 1 / N_out: below that level only ``tpr@0%fpr`` is measured.
    """
    s = as_float64("scores", scores, 1)
    y = as_mask("is_member", is_member, tuple(s.shape))
    pos = int(y.sum())
    neg = y.numel() - pos
    if pos == 0 or neg == 0:
        raise ValueError(f"is_member must hold both members and non-members, got {pos} member(s) and "
                         f"{neg} non-member(s)")
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order]
    last = torch.ones_like(y)
    last[:-1] = s[1:] != s[:-1]  # last element of each group of equal scores
    zero = torch.zeros(1, dtype=torch.long)
    tp = torch.cat([zero, torch.cumsum(y.long(), 0)[last]])
    fp = torch.cat([zero, torch.cumsum((~y).long(), 0)[last]])
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), s[last]])
    twice_area = int(((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])).sum())
    fpr, tpr = fp.to(torch.float64) / neg, tp.to(torch.float64) / pos
    metrics = {"auc": twice_area / (2 * pos * neg)}
    for key, level in FPR_LEVELS.items():
        metrics[key] = float(tpr[fpr <= level].max())  # (0, 0) always qualifies
    metrics.update(fpr=fpr, tpr=tpr, thresholds=thresholds)
    return metrics


def downsample_roc(fpr, tpr, max_points: int = 1000) -> tuple[Tensor, Tensor]:
    """At most ``max_points`` points of a ROC curve (e.g. for a W&B table), shape kept.

    Keeps both endpoints and, at each FPR of a grid (0, the levels of
    ``roc_metrics``, and log-spaced values from the smallest non-zero FPR to 1),
    the first and the last ROC point with the largest FPR <= the grid value
    (both corners of the step). So the low-FPR region keeps its resolution on
    log-log axes, the staircase survives on linear ones, and TPR at the
    ``roc_metrics`` levels read off the downsampled curve is unchanged.
    ``fpr`` must be non-decreasing, as ``roc_metrics`` returns it.
    """
    fpr = as_float64("fpr", fpr, 1)
    tpr = as_float64("tpr", tpr, 1)
    if fpr.shape != tpr.shape or fpr.numel() == 0:
        raise ValueError(f"fpr and tpr must be non-empty and of the same length, got {tuple(fpr.shape)} and "
                         f"{tuple(tpr.shape)}")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 16:
        raise ValueError(f"max_points must be an int >= 16, got {max_points!r}")
    if bool((fpr[1:] < fpr[:-1]).any()):
        raise ValueError("fpr must be non-decreasing (as roc_metrics returns it)")
    n = fpr.numel()
    if n <= max_points:
        return fpr.clone(), tpr.clone()
    positive = fpr[fpr > 0]
    fmin = float(positive.min()) if positive.numel() else 1.0
    grid_size = (max_points - 2) // 2
    levels = torch.tensor([v for v in FPR_LEVELS.values() if v > 0], dtype=torch.float64)
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), levels,
                      torch.logspace(math.log10(fmin), 0.0, grid_size - 1 - len(levels), dtype=torch.float64)])
    last = (torch.searchsorted(fpr, grid, right=True) - 1).clamp(min=0)  # last point with fpr <= g
    first = torch.searchsorted(fpr, fpr[last])  # first point with that same fpr
    keep = torch.unique(torch.cat([torch.tensor([0, n - 1]), last, first]))
    return fpr[keep], tpr[keep]
