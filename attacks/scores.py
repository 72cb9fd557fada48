"""Attack-P, Attack-R, LiRA and the reference-ratio baseline (RMIA: rmia.py).

Higher score = more likely a member. Notation: N audit samples, K references;
``target`` [N], ``references`` [K, N], ``ref_in`` bool [K, N] or None (every
reference OUT). Inputs may be float32 or float64; all math is float64 and every
function returns float64 [N]. Signals averaged over queries go in (design:
"Signals are averaged over the Q queries unless an attack says otherwise").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import as_float64, as_mask, as_probability, references_vs_target
from .rmia import _TINY

_SIGMA_FLOOR = 1e-8


def _target_and_references(target, references, probabilities: bool):
    check = as_probability if probabilities else as_float64
    t = check("target", target, 1)
    r = check("references", references, 2)
    references_vs_target(t, r)
    return t, r


def _ref_in(ref_in, k: int, n: int) -> Tensor:
    return torch.zeros(k, n, dtype=torch.bool) if ref_in is None else as_mask("ref_in", ref_in, (k, n))


def _need(mask: Tensor, what: str, attack: str) -> None:
    missing = int((mask.sum(0) == 0).sum())
    if missing:
        raise ValueError(f"{attack} needs at least one {what} reference per sample in ref_in; "
                         f"{missing} of {mask.shape[1]} samples have none")


def attack_p(target) -> Tensor:
    """The target model's signal itself (Attack-P; Ye et al., CCS 2022)."""
    return as_float64("target", target, 1).clone()


def attack_r(target, references, ref_in=None) -> Tensor:
    """Fraction of OUT references k with references[k, j] <= target[j] (Attack-R; Ye et al., CCS 2022).

    A per-sample percentile of the target's signal among models that did not
    train on the sample; scores live on a grid of step 1 / #OUT.
    """
    t, r = _target_and_references(target, references, probabilities=False)
    out = ~_ref_in(ref_in, *r.shape)
    _need(out, "OUT", "attack_r")
    return ((r <= t) & out).sum(0).to(torch.float64) / out.sum(0)


def reference_ratio(target, references) -> Tensor:
    """p_target(x) / mean_k p_k(x): the simplified ratio of RMIA's code, kept as a baseline.

    Signals are probabilities; the mean is floored at the smallest positive
    float64 so an all-zero row gives a huge finite ratio, not 0 / 0.
    """
    t, r = _target_and_references(target, references, probabilities=True)
    return t / r.mean(0).clamp(min=_TINY)


def _masked_median(x: Tensor, mask: Tensor) -> Tensor:
    """Median over dim 0 of the entries where mask holds; the mean of the two
    middle values for an even count (numpy's median, as in LiRA's code;
    torch.median would return the lower one: with 2 IN references, the min)."""
    s = torch.sort(torch.where(mask, x, torch.inf), dim=0).values
    n = mask.sum(0, keepdim=True)
    lo = s.gather(0, ((n - 1) // 2).clamp(min=0))
    hi = s.gather(0, (n // 2).clamp(max=x.shape[0] - 1))
    return ((lo + hi) / 2).squeeze(0)


def _masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Variance (ddof 0) over dim 0 of the entries where mask holds."""
    m = mask.to(x.dtype)
    n = m.sum(0).clamp(min=1)
    mean = (x * m).sum(0) / n
    return (((x - mean) ** 2) * m).sum(0) / n


def _log_normal(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    return -0.5 * math.log(2 * math.pi) - torch.log(sigma) - 0.5 * ((x - mu) / sigma) ** 2


def lira(target, references, ref_in, online: bool = True, fix_variance: bool = False,
         *, offline_test: str = "one_sided") -> Tensor:
    """LiRA (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022).

    Signals are rescaled logits phi. Per sample, mu_in / mu_out is the median and
    sigma_in / sigma_out the standard deviation (ddof 0) over the IN / OUT
    references; sigma is floored at 1e-8.

    - online: score = log N(phi_t; mu_in, sigma_in^2) - log N(phi_t; mu_out, sigma_out^2);
    - offline, ``offline_test="one_sided"`` (default, the paper's test):
      score = log Phi((phi_t - mu_out) / sigma_out);
    - offline, ``"two_sided"``: score = -log N(phi_t; mu_out, sigma_out^2), the
      ranking of LiRA's reference code (flags samples unusually low as well).

    ``fix_variance``: one global sigma replaces both; online sigma^2 =
    (mean_j var_in + mean_j var_out) / 2, offline sigma^2 = mean_j var_out.
    Online needs an IN and an OUT reference for every sample, offline an OUT.
    """
    for name, flag in (("online", online), ("fix_variance", fix_variance)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if offline_test not in ("one_sided", "two_sided"):
        raise ValueError(f'offline_test must be "one_sided" or "two_sided", got {offline_test!r}')
    t, r = _target_and_references(target, references, probabilities=False)
    inn = _ref_in(ref_in, *r.shape)
    out = ~inn
    if online:
        _need(inn, "IN", "online LiRA")
    _need(out, "OUT", "LiRA")
    mu_out, var_out = _masked_median(r, out), _masked_var(r, out)
    if not online:
        if fix_variance:
            var_out = var_out.mean().expand_as(var_out)
        sigma_out = var_out.sqrt().clamp(min=_SIGMA_FLOOR)
        if offline_test == "one_sided":
            return torch.special.log_ndtr((t - mu_out) / sigma_out)
        return -_log_normal(t, mu_out, sigma_out)
    mu_in, var_in = _masked_median(r, inn), _masked_var(r, inn)
    if fix_variance:
        var_in = var_out = ((var_in.mean() + var_out.mean()) / 2).expand_as(var_in)
    sigma_in, sigma_out = var_in.sqrt().clamp(min=_SIGMA_FLOOR), var_out.sqrt().clamp(min=_SIGMA_FLOOR)
    return _log_normal(t, mu_in, sigma_in) - _log_normal(t, mu_out, sigma_out)
