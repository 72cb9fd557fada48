"""What the SNN-native attacks share: their papers and the features they score.

The math is attacks/access.py (imported when an attack scores, so that the registry loads
without it). Spike counts are scored as log(1 + count): counts are skewed and span orders of
magnitude between layers, and a Gaussian fits their logarithm better; the membrane summary
and the per-step rescaled logits are scored as they are."""

from __future__ import annotations

import torch

LIRA_PAPER = "Carlini et al., Membership Inference Attacks From First Principles, S&P 2022 (steps as queries)"
GAUSSIAN_PAPER = ("Carlini et al., S&P 2022 (LiRA's per-sample IN/OUT Gaussians), multivariate with one covariance "
                  "pooled over samples")
CLASSIFIER_PAPER = ("Shokri et al., Membership Inference Attacks Against Machine Learning Models, S&P 2017 (an attack "
                    "model trained on shadow models' IN/OUT rows), here on per-sample calibrated features")


def features(data, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(target [F, N], references [K, F, N]) float64 of a recorded level, as the attacks score it."""
    target, refs = getattr(data, f"{level}_target"), getattr(data, f"{level}_references")
    if level == "spikes":
        target, refs = torch.log1p(target), torch.log1p(refs)
    return target, refs


def gaussian(data, level: str) -> torch.Tensor:
    from attacks.access import gaussian_lr

    target, refs = features(data, level)
    return gaussian_lr(target, refs, data.ref_in, covariance="shared")


def classifier(data, level: str) -> torch.Tensor:
    from attacks.access import reference_classifier

    target, refs = features(data, level)
    return reference_classifier(target, refs, data.ref_in, seed=0)


def too_few(data, needed: int, what: str) -> str | None:
    """Why `data` has too few references for an attack that needs `needed` (None: enough)."""
    k = len(data.references)
    return f"needs >= {needed} references {what}; got {k}" if k < needed else None
