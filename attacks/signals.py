"""Per-sample signals from a model's logits (black-box: logits in, nothing else).

Both functions accept logits [..., C] with labels of shape ``logits.shape[:-1]``
or any shape that broadcasts to it (labels [N] for query logits [Q, N, C]),
compute in float64 and return float64 of shape ``logits.shape[:-1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_float64


def _labels_for(logits: Tensor, labels) -> Tensor:
    labels = torch.as_tensor(labels, device=logits.device)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    try:
        labels = labels.to(torch.long).expand(logits.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} (or broadcast to it) for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        ) from None
    num_classes = logits.shape[-1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                         f"got values in [{labels.min().item()}, {labels.max().item()}]")
    return labels


def _check_logits(logits) -> Tensor:
    logits = as_float64("logits", logits)
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits must be [..., C] with C >= 2 classes, got shape {tuple(logits.shape)}")
    return logits


def true_class_probability(logits, labels, temperature: float = 1.0) -> Tensor:
    """softmax(logits / temperature)[label], in float64.

    The signal of Attack-P/R and RMIA (Zarifzadeh et al., ICML 2024). Softmax is
    taken in float64: in float32 a true-class probability above 1 - 6e-8 rounds
    to exactly 1.0, and RMIA's ratios of such samples would all tie.
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature != float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    logits = _check_logits(logits)
    labels = _labels_for(logits, labels)
    return _true_class_probability(logits, labels, temperature)


def rescaled_logit(logits, labels) -> Tensor:
    """log p_y - log(1 - p_y), computed stably as z_y - logsumexp_{y' != y} z_{y'}.

    The signal of LiRA (Carlini et al., S&P 2022): approximately Gaussian across
    models, which the likelihood-ratio test assumes. Computing it from p_y would
    give +inf as soon as p_y rounds to 1; from the logits it stays finite
    (logits [1000, 0, 0] give 1000 - log 2).
    """
    logits = _check_logits(logits)
    labels = _labels_for(logits, labels)
    return _rescaled_logit(logits, labels)


# Unchecked versions for the query loop: one check at the end instead of a
# device sync per batch.
def _true_class_probability(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    z = logits.to(torch.float64)
    if temperature != 1.0:
        z = z / temperature
    return torch.softmax(z, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _rescaled_logit(logits: Tensor, labels: Tensor) -> Tensor:
    z = logits.to(torch.float64)
    idx = labels.unsqueeze(-1)
    z_true = z.gather(-1, idx).squeeze(-1)
    z_others = z.scatter(-1, idx, float("-inf"))
    return z_true - torch.logsumexp(z_others, dim=-1)
