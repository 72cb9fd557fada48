"""A trajectory attack: LiRA over a model's training epochs.

Members' rescaled logits rise earlier and further during training than non-members'
(Liu et al., "Membership Inference Attacks by Exploiting Loss Trajectory", CCS 2022).
With the real trajectories of the target and of IN / OUT references, a sample's
trajectory phi [E] is scored by the log-likelihood ratio of two Gaussians with per-sample
means (the mean IN and the mean OUT reference trajectory) and ONE covariance over the
epochs shared by all samples and both groups:

    score = log N(phi; mu_in, S) - log N(phi; mu_out, S)
          = (phi - mu_out)' S^-1 (phi - mu_out) / 2 - (phi - mu_in)' S^-1 (phi - mu_in) / 2

Why shared: with K references a sample has K/2 IN and K/2 OUT trajectories (2 each on
the default K = 4), far fewer than the E epochs, so no per-sample covariance exists; LiRA
itself fixes the variance below 64 references. Why a covariance and not a product of
per-epoch LiRAs: consecutive epochs are strongly correlated, and treating them as
independent would count one piece of evidence E times. S is shrunk towards its diagonal
(10%) so that it stays invertible when E approaches the number of residuals.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_float64, as_mask

SHRINK = 0.1
VAR_FLOOR = 1e-8


def trajectory_lira(target, references, ref_in) -> Tensor:
    """target [E, N] (rescaled logits per epoch), references [K, E, N], ref_in bool [K, N];
    every sample needs an IN and an OUT reference. Returns float64 [N]."""
    t = as_float64("target", target, 2)
    r = as_float64("references", references, 3)
    e, n = t.shape
    if r.shape[1:] != t.shape or r.shape[0] == 0:
        raise ValueError(f"references must have shape [K, {e}, {n}] with K >= 1 to match target, got {tuple(r.shape)}")
    inn = as_mask("ref_in", ref_in, (r.shape[0], n))
    out = ~inn
    for mask, what in ((inn, "IN"), (out, "OUT")):
        if bool((mask.sum(0) == 0).any()):
            raise ValueError(f"the trajectory attack needs at least one {what} reference per sample in ref_in; "
                             f"{int((mask.sum(0) == 0).sum())} of {n} samples have none")
    def group_mean(mask):
        m = mask.to(torch.float64)[:, None, :]                     # [K, 1, N]
        return (r * m).sum(0) / m.sum(0)                           # [E, N]
    mu_in, mu_out = group_mean(inn), group_mean(out)
    resid = torch.where(inn[:, None, :], r - mu_in, r - mu_out)    # [K, E, N]
    flat = resid.permute(1, 0, 2).reshape(e, -1)                   # [E, K * N]
    cov = flat @ flat.T / flat.shape[1]
    cov = (1 - SHRINK) * cov + SHRINK * torch.diag(torch.diag(cov))
    cov = cov + VAR_FLOOR * torch.eye(e, dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)

    def mahalanobis(d):                                            # d [E, N] -> [N]
        w = torch.linalg.solve_triangular(chol, d, upper=False)
        return (w ** 2).sum(0)

    return (mahalanobis(t - mu_out) - mahalanobis(t - mu_in)) / 2
