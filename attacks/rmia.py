"""RMIA (Zarifzadeh, Liu, Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_mask, as_probability

# Pr(x) is floored here so that a sample every reference gives probability 0
# (float underflow of a saturated softmax) has ratio p / tiny, finite and huge,
# instead of 0 / 0. 1 / tiny = 4.5e307 still fits in float64.
_TINY = torch.finfo(torch.float64).tiny
# A tie-broken score moves by at most (1 - 2^-20) / (2Z) < 1 / (2Z).
_TIE_SHRINK = 1.0 - 2.0**-20


def rmia(target, references, target_z, references_z, ref_in=None, offline_a=None, gamma: float = 1.0,
         *, tie_break: bool = True, per_query: bool = False) -> Tensor:
    """RMIA score: the fraction of population samples z that x dominates.

    Signals are true-class probabilities. With Pr(.) the reference estimate of
    the probability a model gives a sample it did not train on:

    - online (``offline_a=None``): Pr(x) = mean over all K references of p_k(x);
    - offline (``offline_a=a``): Pr(x) = (1 + a)/2 * mean over OUT references of
      p_k(x) + (1 - a)/2;
    - Pr(z) uses the same rule over all references (z is OUT for every model);

    ratio(x) = p_target(x) / Pr(x) and score(x) = #{z : ratio(x) / ratio(z) > gamma} / Z.

    Runs in O((N + Z) log Z): the z ratios are sorted once, each x is placed by
    binary search, then moved over whole groups of equal z ratios until the
    predicate ratio(x) / ratio(z) > gamma (the same float operation as the
    pairwise definition) holds exactly up to it; with ``tie_break=False`` the
    scores equal the pairwise N x Z computation bit for bit.

    Ties: the score lives on a grid of step 1/Z. With Z = 180 (digits) many
    members and non-members share the top score and TPR at 1% FPR fell to 0
    at AUC 0.63. ``tie_break=True`` (default) adds f / (2Z) * (1 - 2^-20),
    f in [0, 1] the position of t = ratio(x) / gamma between the two sorted z
    ratios that bracket it (linear interpolation of the z ratios' CDF; below
    the smallest, f = t / ratio_min; above the largest, f = 1 - ratio_max / t).
    So no score moves by 1/(2Z) or more, scores on different grid points keep
    their order, equal grid scores are ordered by ratio(x), and the scores stay
    unchanged (exactly for powers of two, else up to rounding) when all target
    probabilities, audit and population, are multiplied by one constant.

    Note: with one target and signals averaged over queries, score(x) is a
    monotone function of ratio(x), so its AUC equals that of the simple ratio
    up to ties (with the tie-break, exactly). ``per_query=True`` instead scores
    each query on its own and averages the Q scores (the paper's use of
    augmentations). Then target is [Q, N], references [K, Q, N], target_z
    [Q, Z], references_z [K, Q, Z]; with ``per_query=False`` such inputs are
    averaged over Q first.

    ref_in: bool [K, N] (None: every reference is OUT). Online needs at least one
    IN reference per sample, offline at least one OUT. Returns float64 [N].
    """
    r_x, r_z = _ratios(target, references, target_z, references_z, ref_in, offline_a, per_query)
    gamma = _check_gamma(gamma)
    if not isinstance(tie_break, bool):
        raise ValueError(f"tie_break must be True or False, got {tie_break!r}")
    sorted_z = torch.sort(r_z, dim=-1).values
    count = _count_dominated(r_x, sorted_z, gamma)
    z = sorted_z.shape[-1]
    score = count.to(torch.float64) / z
    if tie_break:
        score = score + _interpolate(r_x / gamma, sorted_z, count) * (_TIE_SHRINK / (2 * z))
    return score.mean(0)  # over queries (Q = 1 unless per_query)


def _check_gamma(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < float("inf"):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    return float(gamma)


def _ratios(target, references, target_z, references_z, ref_in, offline_a, per_query):
    """(ratio(x) [Q, N], ratio(z) [Q, Z]) after all input checks."""
    if not isinstance(per_query, bool):
        raise ValueError(f"per_query must be True or False, got {per_query!r}")
    if offline_a is not None and (isinstance(offline_a, bool) or not isinstance(offline_a, (int, float))
                                  or not 0 <= offline_a <= 1):
        raise ValueError(f"offline_a must be None (online) or a number in [0, 1], got {offline_a!r}")
    t = as_probability("target", target, (1, 2))
    q_shape = tuple(t.shape[:-1])  # () or (Q,)
    r = as_probability("references", references, t.ndim + 1)
    tz = as_probability("target_z", target_z, t.ndim)
    rz = as_probability("references_z", references_z, t.ndim + 1)
    n, k, z = t.shape[-1], r.shape[0], tz.shape[-1]
    if k == 0:
        raise ValueError("references must hold at least one reference model (K >= 1), got K = 0")
    if r.shape[1:] != t.shape:
        raise ValueError(f"references must have shape [K, {', '.join(map(str, t.shape))}] to match target, "
                         f"got {tuple(r.shape)}")
    if tuple(tz.shape[:-1]) != q_shape or z == 0:
        raise ValueError(f"target_z must have shape [{', '.join(map(str, q_shape + ('Z',)))}] with Z >= 1 "
                         f"population samples, got {tuple(tz.shape)}")
    if rz.shape[1:] != tz.shape or rz.shape[0] != k:
        raise ValueError(f"references_z must have shape [{k}, {', '.join(map(str, tz.shape))}] (K references "
                         f"by the shape of target_z), got {tuple(rz.shape)}")
    inn = torch.zeros(k, n, dtype=torch.bool) if ref_in is None else as_mask("ref_in", ref_in, (k, n))
    if t.ndim == 1:  # add the query dimension
        t, r, tz, rz = t[None], r[:, None], tz[None], rz[:, None]
    elif not per_query:  # signals averaged over queries (design: unless an attack says otherwise)
        t, r, tz, rz = t.mean(0, keepdim=True), r.mean(1, keepdim=True), tz.mean(0, keepdim=True), rz.mean(1, keepdim=True)
    if offline_a is None:
        if bool((inn.sum(0) == 0).any()):
            raise ValueError(f"online RMIA needs at least one IN reference per sample in ref_in; "
                             f"{int((inn.sum(0) == 0).sum())} of {n} samples have none (use offline_a for offline)")
        pr_x, pr_z = r.mean(0), rz.mean(0)
    else:
        out = (~inn).to(torch.float64)[:, None]  # [K, 1, N]
        n_out = out.sum(0)
        if bool((n_out == 0).any()):
            raise ValueError(f"offline RMIA needs at least one OUT reference per sample in ref_in; "
                             f"{int((n_out == 0).sum())} of {n} samples have none")
        a = float(offline_a)
        pr_x = (1 + a) / 2 * ((r * out).sum(0) / n_out) + (1 - a) / 2
        pr_z = (1 + a) / 2 * rz.mean(0) + (1 - a) / 2
    return t / pr_x.clamp(min=_TINY), tz / pr_z.clamp(min=_TINY)


def _count_dominated(r_x: Tensor, sorted_z: Tensor, gamma: float) -> Tensor:
    """#{z : r_x / r_z > gamma} per x, given r_z sorted ascending [Q, Z] (int64 [Q, N]).

    fl(r_x / v) is non-increasing in v (correctly rounded division is
    monotone), so the z that satisfy the predicate form a prefix of the sorted
    array. Binary search on t = r_x / gamma lands within a few ulps of its end;
    each fix-up step then jumps a whole group of equal z ratios, evaluating the
    exact predicate of the pairwise definition. (Ratio 0 over r_z = 0 is NaN:
    false, as in the pairwise comparison.)
    """
    z = sorted_z.shape[-1]
    pos = torch.searchsorted(sorted_z, r_x / gamma)

    def holds(i: Tensor) -> Tensor:  # predicate at sorted position i (clamped into range)
        return r_x / sorted_z.gather(-1, i.clamp(0, z - 1)) > gamma

    for _ in range(z + 1):  # move right over groups of z that x still dominates
        move = (pos < z) & holds(pos)
        if not bool(move.any()):
            break
        pos = torch.where(move, torch.searchsorted(sorted_z, sorted_z.gather(-1, pos.clamp(max=z - 1)), right=True), pos)
    for _ in range(z + 1):  # move left over groups it does not dominate
        move = (pos > 0) & ~holds(pos - 1)
        if not bool(move.any()):
            break
        pos = torch.where(move, torch.searchsorted(sorted_z, sorted_z.gather(-1, (pos - 1).clamp(min=0))), pos)
    return pos


def _interpolate(t: Tensor, sorted_z: Tensor, count: Tensor) -> Tensor:
    """Where t lies between the z ratios bracketing it, in [0, 1] (scale-free)."""
    z = sorted_z.shape[-1]
    lo = sorted_z.gather(-1, (count - 1).clamp(min=0))
    hi = sorted_z.gather(-1, count.clamp(max=z - 1))
    zero = torch.zeros_like(t)
    inner = torch.where(hi > lo, (t - lo) / torch.where(hi > lo, hi - lo, 1.0), zero)
    below = torch.where(hi > 0, t / torch.where(hi > 0, hi, 1.0), zero)  # count == 0: hi = smallest z ratio
    # count == Z: lo = largest z ratio. When every z ratio is 0 this gives f = 1 for all
    # such x (a tie): any other function of t alone would break the invariance to scaling
    # the target's probabilities (hypothesis found t / (1 + t) doing so).
    above = 1 - lo / torch.where(t > 0, t, 1.0)
    f = torch.where(count == 0, below, torch.where(count == z, above, inner))
    return f.clamp(0.0, 1.0)
