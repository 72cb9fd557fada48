"""QMIA (Bertran et al., "Scalable Membership Inference Attacks via Quantile Regression",
NeurIPS 2023): a regression model, trained on non-members only, predicts for each sample
the distribution of the target's score; a member's score stands out above it.

This module is the math: the training loss and the attack score. Training the regression
model on a dataset is the audit engine's (audit/attacks/qmia.py).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._checks import as_float64, same_shape

SIGMA_FLOOR = 1e-6


def gaussian_head(output: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, std) from a regression head's [B, 2] output: column 0 the mean, column 1 the
    log standard deviation (clamped to [-10, 10] so one bad step cannot overflow exp)."""
    if output.ndim != 2 or output.shape[1] != 2:
        raise ValueError(f"output must be [B, 2] (mean, log std), got shape {tuple(output.shape)}")
    return output[:, 0], output[:, 1].clamp(-10, 10).exp()


def gaussian_nll(output: Tensor, target: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood of `target` [B] under the head's (mean, std):
    torch's gaussian_nll_loss with full=True (the authors' code fits mean and spread this way)."""
    mean, std = gaussian_head(output)
    return F.gaussian_nll_loss(mean, target.to(mean.dtype), std ** 2, full=True, eps=SIGMA_FLOOR ** 2)


def qmia(target, mean, std) -> Tensor:
    """score = (target - mean) / std: how many predicted standard deviations the target's
    score (a rescaled logit) lies above what a non-member's would be. Thresholding it at
    Phi^-1(1 - alpha) is the paper's test at false-positive rate alpha when the prediction is
    right; as a ranking, it is the paper's quantile attack for every alpha at once. All [N];
    std is floored at 1e-6. Returns float64 [N]."""
    t = as_float64("target", target, 1)
    m = as_float64("mean", mean, 1)
    s = as_float64("std", std, 1)
    same_shape("target", t, "mean", m)
    same_shape("target", t, "std", s)
    if bool((s < 0).any()):
        raise ValueError("std must be >= 0")
    return (t - m) / s.clamp(min=SIGMA_FLOOR)
