"""An empirical lower bound on differential privacy's epsilon from one trained target.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run"
(NeurIPS 2023). The auditor turns membership scores into guesses: "member" for
its k+ highest scores, "non-member" for its k- lowest, no guess for the rest.
If the training algorithm were (eps, delta)-DP, the number of correct guesses
among the r = k+ + k- guesses could exceed v only with a small probability
p(eps). The bound is the largest eps with p(eps) <= 1 - confidence: at that
confidence, the target was not trained by any algorithm that is (eps',
delta)-DP for an eps' below it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import as_float64, as_mask

# scipy is imported inside the functions that use it: scipy.stats takes 0.85 s to import here, and
# every run.py command imports this package.

DESIGNS = ("half", "independent")
# The k of the default search: k+ = k (one-sided) and k+ = k- = k (two-sided) for each k of a
# 1-2-5 series from 10 up to N/2, fixed before any score is seen.
_SERIES = (1, 2, 5)


def eps_lower_bound(scores, is_member, *, k_plus: int | None = None, k_minus: int | None = None,
                    delta: float = 0.0, confidence: float = 0.95, design: str = "half") -> dict:
    """The largest epsilon that one audit rules out at ``confidence``, with the guesses behind it.

    Guesses: the k+ highest ``scores`` are guessed members and the k- lowest
    non-members (ties broken by sample index, which the membership plan does not
    depend on); v of the r = k+ + k- guesses are correct.

    p-value (Steinke et al., Theorem for delta = 0 and its extension to delta > 0):
    with q = e^eps / (1 + e^eps), the accuracy of eps-DP randomized response,

    - delta = 0: p(eps) = P[Binomial(r, q) >= v];
    - delta > 0: p(eps) = P[Binomial(r, q) >= v] + 2 m delta max_{i=1..v}
      P[v - i <= Binomial(r, q) < v] / i, with m = N, the samples whose
      membership was randomised;

    and eps_lb = max{eps >= 0 : p(eps) <= alpha} (0 when even eps = 0 is not
    rejected), found by bracketing and Brent's method and then nudged down until
    p(eps_lb) <= alpha holds, so it never overstates.

    p(eps) grows with eps (for delta = 0 the binomial tail grows with q; for
    delta > 0 it did on a grid of 1,201 eps in [0, 12] for 18 (r, v, delta, m)
    cases), so the eps below eps_lb are rejected too.

    Choice of k. The paper's auditor (its Algorithm 1) takes k+ and k- as
    parameters fixed before the run; choosing them after seeing the scores
    needs a correction. With ``k_plus`` and/or ``k_minus`` given (None counts as 0),
    one test at alpha = 1 - confidence. With both None (default), every pair
    (k, 0) and (k, k) for k in 10, 20, 50, 100, 200, ... <= N/2 is tried and the
    largest bound is reported, each tested at alpha / G for the G pairs
    (Bonferroni): the grid depends only on N, so the union bound keeps the
    stated confidence for the maximum. (Picking the best k after looking,
    without the correction, would overstate the confidence.)

    Membership design (``design``), what the p-value assumes:

    - ``"independent"``: the paper's setting, each of the N samples a member
      independently with probability 1/2. Its proof needs that independence:
      given the other samples' membership, a sample's own is still a fair coin.
    - ``"half"`` (default): this tool's plan, exactly c = ``is_member.sum()``
      members, a uniformly random c-subset (row 0 of the plan: c = N // 2). Given
      the others, a sample's membership is then determined, so the paper's
      theorem does not cover it as stated. The plan is the independent design
      conditioned on "exactly c members", an event of probability P_c =
      C(N, c) / 2^N, so any event has probability at most (its probability
      under the independent design) / P_c. The p-value is therefore multiplied
      by 1 / P_c (about sqrt(pi N / 2): 50 at N = 1,617, 307 at N = 60,000), which
      makes the bound valid for the plan, at the price of a smaller eps_lb
      (200 of 200 guesses right at N = 1,617: 3.03 instead of 3.58; 3,984 of
      4,000 at N = 60,000: 4.57 instead of 4.87).

    How far off is the paper's p-value on the plan? ``benchmarks/eps_design.py``
    audits eps-DP randomized response (eps = 1, N = 1,000, 20,000 plans): with
    one-sided guesses (k- = 0) the plan made the test more conservative (3.5%
    of bounds above eps, against the test's 4.8% size under independence);
    with k+ = k- it rejected slightly more often than its size (5.16% against
    4.80% for 100 + 100, 5.01% against 4.87% for 300 + 300). Correct guesses
    then vary a little more than binomially (at eps = 0 exactly by N / (N - 1)),
    because a member among the top guesses is one fewer among the bottom ones.
    So ``"independent"`` is close but not guaranteed on the plan, and
    ``"half"`` is guaranteed but conservative (0.02% to 0.13% there).

    delta > 0: the delta term grows with 2 N delta (and, with ``"half"``, with
    1 / P_c too), so it only informs when delta is far below 1 / N: at N = 1,617
    with delta = 1e-5 the bound above fell from 3.03 to 0.36.

    Returns a dict: ``eps_lb``, ``k_plus``, ``k_minus``, ``guesses`` (r),
    ``correct`` (v), ``confidence``, ``delta``, ``design``, ``num_samples`` (N),
    ``num_members`` (c), ``candidates`` (G), ``alpha_per_candidate`` and
    ``assumptions`` (one sentence).
    """
    s = as_float64("scores", scores, 1)
    y = as_mask("is_member", is_member, tuple(s.shape))
    n = s.numel()
    if n < 2:
        raise ValueError(f"scores must hold at least 2 samples, got {n}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta <= 1:
        raise ValueError(f"delta must be a number in [0, 1], got {delta!r}")
    if (isinstance(confidence, bool) or not isinstance(confidence, (int, float))
            or not 0 < confidence < 1):
        raise ValueError(f"confidence must be a number in (0, 1), e.g. 0.95, got {confidence!r}")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    for name, k in (("k_plus", k_plus), ("k_minus", k_minus)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n):
            raise ValueError(f"{name} must be None or an int in [0, {n}] (the number of samples), got {k!r}")
    if k_plus is None and k_minus is None:
        candidates = _default_candidates(n)
    else:
        kp, km = k_plus or 0, k_minus or 0
        if kp + km == 0 or kp + km > n:
            raise ValueError(f"k_plus + k_minus must be in [1, {n}] (the number of samples), got {kp} + {km}")
        candidates = [(kp, km)]

    c = int(y.sum())
    alpha = (1 - confidence) / len(candidates)
    log_factor = plan_log_factor(n, c) if design == "half" else 0.0
    member_sorted = y[torch.argsort(s, descending=True, stable=True)].long()
    best = None
    for kp, km in candidates:
        correct = int(member_sorted[:kp].sum()) + (km - int(member_sorted[n - km:].sum()))
        eps = _eps_from_counts(kp + km, correct, n, delta, alpha, log_factor)
        if best is None or eps > best[0]:
            best = (eps, kp, km, correct)
    eps, kp, km, correct = best
    plan = (f"exactly {c} of {n} samples are members, a uniformly random subset (p-values x 2^N / C(N, c))"
            if design == "half" else f"each of the {n} samples is a member independently with probability 1/2")
    choice = (f"the best of {len(candidates)} (k+, k-) pairs fixed in advance, each at alpha / {len(candidates)}"
              if len(candidates) > 1 else "one (k+, k-) pair given in advance")
    return {
        "eps_lb": eps, "k_plus": kp, "k_minus": km, "guesses": kp + km, "correct": correct,
        "confidence": confidence, "delta": delta, "design": design, "num_samples": n, "num_members": c,
        "candidates": len(candidates), "alpha_per_candidate": alpha,
        "assumptions": f"Membership: {plan}; guesses: {choice}; the target's training is the only "
                       f"randomness besides the plan (one run, add/remove-one DP).",
    }


def canary_eps_lower_bound(scores, included, *, delta: float = 0.0, confidence: float = 0.95) -> dict:
    """The one-run bound on canaries: ``{count, guesses, correct, eps_lb, k_plus, k_minus, delta,
    confidence, candidates}``.

    Canaries are the paper's own setting: each of the m canaries is included independently
    with probability 1/2 (``included``, bool [m]), so the p-value is the paper's, with no
    correction for the plan's fixed-size design (``design="independent"``), and m, not the
    whole audit set, is the number of randomised samples in the delta term.

    Guesses. The auditor guesses "included" for its k+ highest ``scores`` and "excluded" for
    its k- lowest, and abstains on the rest. The paper's Algorithm 1 takes k+ and k- as
    fixed in advance; its experiments try several and report the best. Here the pairs
    (k, 0) and (k, k), k in 10, 20, 50, 100, 200, ... <= m / 2 (m / 2 alone when m < 20),
    are fixed by m before any score is seen, every pair is tested at alpha / G for the G
    pairs (Bonferroni), and the largest bound is reported: the maximum keeps the stated
    confidence. (``eps_lower_bound`` documents the p-value and the search.)

    ``eps_lb`` is 0 when no pair rejects eps = 0: scores that say nothing about inclusion
    give 0 in at least 95% of audits (tests/test_attacks_epsilon.py counts 200 of them).
    """
    s = as_float64("scores", scores, 1)
    b = as_mask("included", included, tuple(s.shape))
    out = eps_lower_bound(s, b, delta=delta, confidence=confidence, design="independent")
    return {"count": out["num_samples"], "guesses": out["guesses"], "correct": out["correct"],
            "eps_lb": out["eps_lb"], "k_plus": out["k_plus"], "k_minus": out["k_minus"], "delta": out["delta"],
            "confidence": out["confidence"], "candidates": out["candidates"]}


def p_value(guesses: int, correct: int, eps: float, delta: float = 0.0, num_samples: int | None = None) -> float:
    """P[at least ``correct`` of ``guesses`` guesses are right] for an (eps, delta)-DP algorithm,
    under the paper's independent design (``eps_lower_bound`` documents the formula;
    ``num_samples``, m, is needed only when delta > 0)."""
    if delta > 0 and num_samples is None:
        raise ValueError("num_samples must be given when delta > 0 (the delta term scales with it)")
    return math.exp(min(0.0, _log_p(guesses, correct, eps, delta, num_samples or 0)))


def plan_log_factor(num_samples: int, num_members: int) -> float:
    """log(2^N / C(N, c)): the log of 1 / P[exactly c of N independent fair coins are members], the
    factor by which ``design="half"`` multiplies the paper's p-value."""
    n, c = num_samples, num_members
    return n * math.log(2) - (math.lgamma(n + 1) - math.lgamma(c + 1) - math.lgamma(n - c + 1))


def _default_candidates(n: int) -> list[tuple[int, int]]:
    ks, decade = [], 10
    while True:
        new = [m * decade for m in _SERIES if m * decade <= n // 2]
        if not new:
            break
        ks += new
        decade *= 10
    ks = ks or [max(1, n // 2)]
    return [(k, 0) for k in ks] + [(k, k) for k in ks if 2 * k <= n]


def _log_p(r: int, v: int, eps: float, delta: float, m: int) -> float:
    """log p(eps) under the independent design (may exceed 0 before the cap at 1)."""
    from scipy import special, stats

    if v <= 0:
        return 0.0
    q = float(special.expit(eps))
    log_tail = float(stats.binom.logsf(v - 1, r, q))  # log P[B >= v]
    if delta == 0:
        return log_tail
    i = np.arange(1, v + 1)
    between = stats.binom.sf(v - i - 1, r, q) - math.exp(log_tail)  # P[v - i <= B < v]
    return math.log(math.exp(log_tail) + 2 * m * delta * float(np.max(between / i)))


def _eps_from_counts(r: int, v: int, n: int, delta: float, alpha: float, log_factor: float) -> float:
    """max{eps >= 0 : p(eps) * factor <= alpha}, rounded down."""
    from scipy import optimize

    log_alpha = math.log(alpha)

    def excess(eps: float) -> float:  # > 0 where p(eps) is too large to reject eps
        return min(0.0, log_factor + _log_p(r, v, eps, delta, n)) - log_alpha

    if excess(0.0) > 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) <= 0:  # p -> 1 as eps grows (q -> 1), so this ends
        lo, hi = hi, 2 * hi
    eps = optimize.brentq(excess, lo, hi, xtol=1e-12)
    step = 1e-12
    while eps > 0 and excess(eps) > 0:  # never report an eps that the test does not reject
        eps, step = max(0.0, eps - step), 2 * step
    return eps
