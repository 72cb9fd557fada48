"""Scores for the SNN-native access levels: label, steps, spikes and membrane.

Notation as in scores.py: N audit samples, K references, ref_in bool [K, N]
(True = reference k trained on sample j). Inputs may be float32 or float64 (or
bool where a correctness flag is meant); all math is float64 and every function
returns float64 [N], higher = more likely a member.

- ``label_only``: the target's correctness rate over the Q queries minus the
  OUT references' (the sample's difficulty).
- ``gaussian_lr``: per-sample IN / OUT means of an F-dim feature vector, one
  covariance pooled over samples and both groups; log N(x; mu_in, S) -
  log N(x; mu_out, S). The multivariate steps attack is this on the [T, N] steps.
- ``reference_classifier``: logistic regression trained on the references'
  calibrated, standardised feature rows (label ref_in), applied to the target.
- ``steps_lira``: online LiRA per time step, averaged over the T steps.

RMIA with the steps as queries needs no new function: ``rmia(per_query=True)``
takes [Q, N] / [K, Q, N] signals and averages the Q per-query scores, so pass
the steps' true-class probabilities sigmoid(steps) (a rescaled logit is
log p / (1 - p), so sigmoid gives p back; take it in float64, where it
saturates at 1 only beyond 37, not 17 as in float32)::

    p = lambda s: torch.sigmoid(s.double())
    rmia(p(steps_target), p(steps_refs), p(steps_target_z), p(steps_refs_z), ref_in,
         per_query=True)            # [T, N], [K, T, N], [T, Z], [K, T, Z]

(``offline_a=a`` for the offline version, as with any signal.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_float64, as_mask
from .scores import lira

COVARIANCES = ("shared", "diagonal")
SHRINK = 0.01      # towards the diagonal: keeps S invertible when features are (nearly) collinear
VAR_FLOOR = 1e-8   # times each variance, added to it (the trajectory attack adds 1e-8 itself)
L2 = 1.0           # logistic regression penalty 0.5 * L2 * |w|^2 on standardised features
_NEWTON_STEPS = 100


# ---------------------------------------------------------------- checks

def _as_flags(name: str, x, ndim: int) -> Tensor:
    """A bool (or 0/1) tensor with ``ndim`` dimensions."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D bool tensor, got shape {tuple(x.shape)}")
    return as_mask(name, x, tuple(x.shape))


def _check_refs(t: Tensor, r: Tensor, what: str) -> None:
    """`{what}_refs` [K, A, N] with K >= 1 matches `{what}_target` [A, N] (ValueError otherwise)."""
    if r.shape[1:] != t.shape or r.shape[0] == 0:
        a, n = t.shape
        raise ValueError(f"{what}_refs must have shape [K, {a}, {n}] with K >= 1 to match {what}_target "
                         f"[{a}, {n}], got {tuple(r.shape)}")


def _features(x_target, x_refs, ref_in, what: str = "x"):
    """(x [F, N], refs [K, F, N], ref_in [K, N]) after shape checks."""
    t = as_float64(f"{what}_target", x_target, 2)
    r = as_float64(f"{what}_refs", x_refs, 3)
    f, n = t.shape
    _check_refs(t, r, what)
    if f == 0 or n == 0:
        raise ValueError(f"{what}_target must hold at least one feature and one sample, got shape {tuple(t.shape)}")
    return t, r, as_mask("ref_in", ref_in, (r.shape[0], n))


def _need_both(inn: Tensor, attack: str) -> None:
    for mask, what in ((inn, "IN"), (~inn, "OUT")):
        missing = int((mask.sum(0) == 0).sum())
        if missing:
            raise ValueError(f"{attack} needs at least one {what} reference per sample in ref_in; "
                             f"{missing} of {mask.shape[1]} samples have none")


def _group_mean(r: Tensor, mask: Tensor) -> Tensor:
    """Mean over the references where mask holds: r [K, F, N], mask [K, N] -> [F, N]."""
    m = mask.to(torch.float64)[:, None, :]
    return (r * m).sum(0) / m.sum(0).clamp(min=1)


# ---------------------------------------------------------------- label

def label_only(correct_target, correct_refs, ref_in) -> Tensor:
    """Calibrated correctness (a label-only attack; the query masks are the perturbations).

    correct_target bool [Q, N], correct_refs bool [K, Q, N]. With c(x) the
    fraction of the Q queries a model labels correctly,
    score = c_target(x) - mean over OUT references of c_k(x): members stay
    correct under perturbation more often than the sample's difficulty predicts
    (Choquette-Choo et al., "Label-Only Membership Inference Attacks", ICML 2021,
    scored by correctness under augmentation; calibrated by difficulty as in
    Watson et al., ICLR 2022). A sample with no OUT reference is calibrated by
    the mean over all K references. Scores live on a grid of step 1 / Q.
    """
    t = _as_flags("correct_target", correct_target, 2)
    r = _as_flags("correct_refs", correct_refs, 3)
    q, n = t.shape
    _check_refs(t, r, "correct")
    if q == 0:
        raise ValueError("correct_target must hold at least one query (Q >= 1), got Q = 0")
    out = ~as_mask("ref_in", ref_in, (r.shape[0], n))
    rate_t = t.to(torch.float64).mean(0)
    rate_r = r.to(torch.float64).mean(1)                            # [K, N]
    n_out = out.sum(0)
    calib_out = (rate_r * out).sum(0) / n_out.clamp(min=1)
    return rate_t - torch.where(n_out > 0, calib_out, rate_r.mean(0))


# ---------------------------------------------------------------- Gaussian likelihood ratio

def gaussian_fit(x_refs, ref_in, covariance: str = "shared", *, shrink: float = SHRINK):
    """(mu_in [F, N], mu_out [F, N], S [F, F]) as ``gaussian_lr`` uses them.

    mu_in / mu_out: the mean over the sample's IN / OUT references. S: the
    covariance (ddof 0) of the residuals of every reference row from its
    group's mean, pooled over samples and both groups; "shared" shrinks it by
    ``shrink`` towards its diagonal, "diagonal" keeps the diagonal only; both
    multiply the variances by 1 + VAR_FLOOR (a variance of 0 becomes VAR_FLOOR).
    """
    r = as_float64("x_refs", x_refs, 3)
    return _gaussian_fit(r, as_mask("ref_in", ref_in, (r.shape[0], r.shape[2])), covariance, shrink)


def _gaussian_fit(r: Tensor, inn: Tensor, covariance, shrink):
    if covariance not in COVARIANCES:
        raise ValueError(f'covariance must be "shared" or "diagonal", got {covariance!r}')
    if isinstance(shrink, bool) or not isinstance(shrink, (int, float)) or not 0 <= shrink <= 1:
        raise ValueError(f"shrink must be a number in [0, 1], got {shrink!r}")
    k, f, n = r.shape
    _need_both(inn, "gaussian_lr")
    if k < 3:
        raise ValueError(f"gaussian_lr needs K >= 3 references (2 IN or 2 OUT for some sample) to estimate "
                         f"a covariance from residuals, got K = {k}")
    mu_in, mu_out = _group_mean(r, inn), _group_mean(r, ~inn)
    resid = torch.where(inn[:, None, :], r - mu_in, r - mu_out)     # [K, F, N]
    flat = resid.permute(1, 0, 2).reshape(f, -1)                   # [F, K * N]
    cov = flat @ flat.T / flat.shape[1]
    diag = torch.diag(torch.diag(cov))
    cov = (1 - shrink) * cov + shrink * diag if covariance == "shared" else diag
    var = torch.diag(diag)
    # relative to each variance (absolute where one is 0), so that the score does not depend on a
    # feature's unit (spike counts in thousands beside potentials near 1)
    return mu_in, mu_out, cov + VAR_FLOOR * torch.diag(torch.where(var > 0, var, torch.ones_like(var)))


def gaussian_lr(x_target, x_refs, ref_in, covariance: str = "shared", *, shrink: float = SHRINK) -> Tensor:
    """Per-sample IN / OUT Gaussian likelihood ratio of an F-dim feature vector (online).

    x_target [F, N], x_refs [K, F, N]. score = log N(x; mu_in, S) -
    log N(x; mu_out, S) with the means and S of ``gaussian_fit``; with one S the
    log-determinants cancel, so score = (d_out - d_in) / 2, d the squared
    Mahalanobis distances. LiRA's test (Carlini et al., S&P 2022) in F
    dimensions. Why S is pooled: with K = 4 a sample has 2 IN and 2 OUT rows, so
    no per-sample covariance exists, while the pooled one has (K - 2) N degrees
    of freedom; LiRA fixes its variance below 64 references for the same reason.
    Why full ("shared"): correlated features (spike counts of consecutive
    layers, consecutive time steps) would otherwise count one piece of evidence
    several times. Assumes the residuals are Gaussian with one covariance for
    every sample and for members and non-members (the means carry the
    difference). Every sample needs an IN and an OUT reference.
    With ``shrink=0.1`` and covariance "shared" this is ``trajectory_lira``.
    """
    t, r, inn = _features(x_target, x_refs, ref_in)
    mu_in, mu_out, cov = _gaussian_fit(r, inn, covariance, shrink)
    chol = torch.linalg.cholesky(cov)

    def mahalanobis(d: Tensor) -> Tensor:                          # d [F, N] -> [N]
        return (torch.linalg.solve_triangular(chol, d, upper=False) ** 2).sum(0)

    return (mahalanobis(t - mu_out) - mahalanobis(t - mu_in)) / 2


# ---------------------------------------------------------------- reference-trained classifier

def reference_classifier(x_target, x_refs, ref_in, *, seed: int = 0, l2: float = L2) -> Tensor:
    """Logistic regression trained on the references, applied to the target; returns its logit.

    x_target [F, N], x_refs [K, F, N]. Features are calibrated per sample:
    a reference row (k, j) minus the mean of the OTHER K - 1 references of
    sample j (leave-one-out, so a row is never compared with itself), the
    target row minus the mean of all K. They are standardised with the
    reference rows' mean and standard deviation (a constant feature is left at
    0). The model, logit = w' z + b, is fitted on the K * N reference rows with
    label ref_in by Newton's method (IRLS) from zero, with step halving, on the
    mean log loss + 0.5 * l2 / (K N) * |w|^2 (scikit-learn's C = 1 / l2; b is
    not penalised), in float64.

    Why: it learns from the references which features, and which combination,
    separate IN from OUT rows, without assuming Gaussian features or one
    covariance (the assumptions of ``gaussian_lr``), and pools all K N rows, so
    K = 4 is enough. Assumes the calibrated features of members differ from
    those of non-members the same way in every model (a linear boundary), and
    that the target behaves like the references. With 2 IN and 2 OUT references
    the leave-one-out mean of an IN row holds 1 IN and 2 OUT rows while the
    target's holds 2 and 2, so a member's calibrated shift is 3/4 of a
    reference row's on average: the logits of target rows are on a smaller
    scale than the training rows', which changes no ranking (only w' z orders
    the target rows; the bias is common to all).

    Deterministic: Newton from zero draws no random numbers, so ``seed`` does
    not change the result; it is part of the agreed signature so that a caller
    can pass its seed to any fitted attack alike.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0 < l2 < float("inf"):
        raise ValueError(f"l2 must be a finite number > 0, got {l2!r}")
    t, r, inn = _features(x_target, x_refs, ref_in)
    k, f, n = r.shape
    if k < 2:
        raise ValueError(f"reference_classifier needs K >= 2 references (a leave-one-out mean), got K = {k}")
    if not bool(inn.any()) or bool(inn.all()):
        raise ValueError("reference_classifier needs both IN and OUT rows in ref_in to learn from, "
                         f"got {int(inn.sum())} IN of {inn.numel()}")
    total = r.sum(0)                                               # [F, N]
    rows = (r - (total - r) / (k - 1)).permute(0, 2, 1).reshape(k * n, f)
    target_rows = (t - total / k).T                                # [N, F]
    mean, std = rows.mean(0), rows.std(0, correction=0)
    scale = torch.where(std > 0, std, torch.ones_like(std))
    x = torch.cat([(rows - mean) / scale, torch.ones(k * n, 1, dtype=torch.float64)], 1)
    y = inn.reshape(k * n).to(torch.float64)
    w = _fit_logistic(x, y, l2 / (k * n))
    return torch.cat([(target_rows - mean) / scale, torch.ones(n, 1, dtype=torch.float64)], 1) @ w


def _fit_logistic(x: Tensor, y: Tensor, lam: float) -> Tensor:
    """argmin mean log loss + 0.5 lam |w[:-1]|^2 (last column: the unpenalised bias)."""
    p = x.shape[1]
    pen = torch.full((p,), lam, dtype=torch.float64)
    pen[-1] = 0.0

    def objective(w: Tensor) -> Tensor:
        z = x @ w
        return (torch.nn.functional.softplus(z) - y * z).mean() + 0.5 * (pen * w * w).sum()

    w = torch.zeros(p, dtype=torch.float64)
    loss = objective(w)
    for _ in range(_NEWTON_STEPS):
        prob = torch.sigmoid(x @ w)
        grad = x.T @ (prob - y) / len(y) + pen * w
        hess = (x.T * (prob * (1 - prob))) @ x / len(y) + torch.diag(pen)
        hess = hess + 1e-12 * torch.eye(p, dtype=torch.float64)    # a separable bias-only direction
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-10:
            new_w = w - t * step
            new_loss = objective(new_w)
            if new_loss <= loss:
                break
            t /= 2
        else:
            break
        done = float((loss - new_loss).abs()) <= 1e-14 * max(1.0, float(loss.abs()))
        w, loss = new_w, new_loss
        if done:
            break
    return w


# ---------------------------------------------------------------- steps

def steps_lira(steps_target, steps_refs, ref_in, *, fix_variance: bool | None = None) -> Tensor:
    """Online LiRA per time step, averaged over the T steps.

    steps_target [T, N], steps_refs [K, T, N]: the rescaled logit of the true
    class of the readout at each step. Each step is treated as LiRA treats a
    query (an augmentation): the Gaussian log likelihood ratio of ``lira`` at
    that step (median of the IN / OUT references; their ddof-0 spread, or with
    ``fix_variance`` one sigma per step over all samples), averaged over the
    steps. ``fix_variance=None`` (default) fixes it when K < 128, as the
    ``lira_online`` attack does (LiRA's paper: below 64 IN / OUT references per
    sample), since a per-sample spread from 2 references is too noisy.
    Assumes each step's signal is Gaussian across models; averaging (not
    summing as if independent) tempers the evidence of correlated steps without
    estimating their correlation, which ``gaussian_lr`` on the steps does. Every
    sample needs an IN and an OUT reference.
    """
    t = as_float64("steps_target", steps_target, 2)
    r = as_float64("steps_refs", steps_refs, 3)
    steps, n = t.shape
    _check_refs(t, r, "steps")
    if steps == 0:
        raise ValueError("steps_target must hold at least one time step (T >= 1), got T = 0")
    if fix_variance is not None and not isinstance(fix_variance, bool):
        raise ValueError(f"fix_variance must be None (on when K < 128), True or False, got {fix_variance!r}")
    inn = as_mask("ref_in", ref_in, (r.shape[0], n))
    _need_both(inn, "steps_lira")
    fix = r.shape[0] < 128 if fix_variance is None else fix_variance
    return torch.stack([lira(t[i], r[:, i], inn, fix_variance=fix) for i in range(steps)]).mean(0)
