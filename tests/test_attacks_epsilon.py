"""The one-run epsilon lower bound against binomial tails worked out by hand (fractions, math.comb),
an independent inverse search, the membership designs, the k grid, and bad input."""

import math
from fractions import Fraction

import pytest
import torch

from attacks import eps_lower_bound, p_value
from attacks.epsilon import _default_candidates, _eps_from_counts, plan_log_factor


def _tail(r, v, q):
    """P[Binomial(r, q) >= v] in exact arithmetic (q a Fraction) or floats."""
    return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1))


def _logit(q):
    return math.log(q / (1 - q))


def _scores_with(pattern):
    """Scores that rank the samples in the given order (first = highest), membership = the pattern."""
    n = len(pattern)
    return torch.arange(n, 0, -1, dtype=torch.float64), torch.tensor(pattern, dtype=torch.bool)


def test_p_value_is_the_binomial_tail_worked_by_hand():
    # r = 10 guesses, v = 9 correct. At eps = ln 3, q = e^eps / (1 + e^eps) = 3/4:
    # P[B >= 9] = 10 (3/4)^9 (1/4) + (3/4)^10 = (3/4)^9 * 13/4 = 13 * 3^9 / 4^10
    assert _tail(10, 9, Fraction(3, 4)) == Fraction(13 * 3**9, 4**10)
    assert p_value(10, 9, math.log(3)) == pytest.approx(13 * 3**9 / 4**10, rel=1e-12)
    # at eps = ln 9, q = 9/10: (9/10)^9 (1 + 9/10) = 19 * 9^9 / 10^10
    assert p_value(10, 9, math.log(9)) == pytest.approx(19 * 9**9 / 10**10, rel=1e-12)
    assert p_value(10, 0, 5.0) == 1.0  # zero correct guesses are always possible


def test_eps_lower_bound_inverts_the_tail_like_a_search_by_hand():
    """9 of 10 guesses correct: bisect q in P[Binomial(10, q) >= 9] = 0.05 with math.comb, then eps = logit q."""
    lo, hi = 0.5, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _tail(10, 9, mid) <= 0.05 else (lo, mid)
    s, y = _scores_with([1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    out = eps_lower_bound(s, y, k_plus=10, design="independent")
    assert (out["guesses"], out["correct"], out["k_plus"], out["k_minus"]) == (10, 9, 10, 0)
    assert out["eps_lb"] == pytest.approx(_logit(lo), abs=1e-9)
    assert out["eps_lb"] == pytest.approx(0.42985, abs=1e-5)
    assert p_value(10, 9, out["eps_lb"]) <= 0.05 < p_value(10, 9, out["eps_lb"] + 1e-6)  # rounded down


def test_all_correct_has_a_closed_form_for_both_designs():
    # 20 guesses, all right: q^20 = alpha, so eps = logit(alpha^(1/20)) = 1.8227 (independent).
    # Plan of exactly 20 members out of 40: p is multiplied by 2^40 / C(40, 20) = 7.976, so
    # q^20 = alpha / 7.976 and eps = 1.2425.
    s, y = _scores_with([1] * 20 + [0] * 20)
    ind = eps_lower_bound(s, y, k_plus=20, design="independent")
    half = eps_lower_bound(s, y, k_plus=20)  # design="half" is the default
    factor = Fraction(2**40, math.comb(40, 20))
    assert ind["eps_lb"] == pytest.approx(_logit(0.05 ** (1 / 20)), abs=1e-9)
    assert half["eps_lb"] == pytest.approx(_logit((0.05 / float(factor)) ** (1 / 20)), abs=1e-9)
    assert half["eps_lb"] == pytest.approx(1.2425, abs=1e-4) and ind["eps_lb"] == pytest.approx(1.8227, abs=1e-4)
    # two-sided: the 10 lowest guessed non-members, all right as well: 30 correct of 30
    both = eps_lower_bound(s, y, k_plus=20, k_minus=10, design="independent")
    assert (both["guesses"], both["correct"]) == (30, 30)
    assert both["eps_lb"] == pytest.approx(_logit(0.05 ** (1 / 30)), abs=1e-9)


def test_all_wrong_or_too_few_guesses_give_zero():
    s, y = _scores_with([0] * 10 + [1] * 10)  # members score lowest
    assert eps_lower_bound(s, y, k_plus=10)["eps_lb"] == 0.0
    assert eps_lower_bound(s, y, k_plus=5, k_minus=5)["correct"] == 0
    s, y = _scores_with([1, 0, 1, 0])
    assert eps_lower_bound(s, y, k_plus=1, design="independent")["eps_lb"] == 0.0  # 1 of 1: p = q >= 1/2


def test_delta_term_worked_by_hand():
    # r = 3, v = 2, q = 3/4: P[B = 0..3] = 1, 9, 27, 27 (/64). beta = P[B >= 2] = 54/64;
    # max_i P[2 - i <= B < 2] / i = max(9/64, 10/64 / 2) = 9/64; p = beta + 2 m delta 9/64.
    m, delta = 100, 1e-3
    assert p_value(3, 2, math.log(3), delta, m) == pytest.approx((54 + 2 * m * delta * 9) / 64, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) < 200
    s = torch.randn(400, generator=g, dtype=torch.float64) + 2.5 * y
    plain = eps_lower_bound(s, y, k_plus=50, design="independent")
    with_delta = eps_lower_bound(s, y, k_plus=50, delta=1e-5, design="independent")
    assert 0 < with_delta["eps_lb"] < plain["eps_lb"]
    with pytest.raises(ValueError, match="num_samples"):
        p_value(3, 2, 1.0, delta=1e-3)


def test_default_search_is_bonferroni_over_a_grid_fixed_by_n():
    assert _default_candidates(1617) == [(k, 0) for k in (10, 20, 50, 100, 200, 500)] + \
        [(k, k) for k in (10, 20, 50, 100, 200, 500)]
    assert _default_candidates(12) == [(6, 0), (6, 6)]
    g = torch.Generator().manual_seed(1)
    y = torch.zeros(1617, dtype=torch.bool)
    y[torch.randperm(1617, generator=g)[:808]] = True
    s = torch.randn(1617, generator=g, dtype=torch.float64) + 1.5 * y
    out = eps_lower_bound(s, y)
    assert out["candidates"] == 12 and out["alpha_per_candidate"] == pytest.approx(0.05 / 12)
    each = [eps_lower_bound(s, y, k_plus=kp, k_minus=km, confidence=1 - 0.05 / 12)
            for kp, km in _default_candidates(1617)]
    best = max(each, key=lambda e: e["eps_lb"])
    assert out["eps_lb"] == pytest.approx(best["eps_lb"], abs=1e-9) and out["eps_lb"] > 0
    assert (out["k_plus"], out["k_minus"], out["correct"]) == (best["k_plus"], best["k_minus"], best["correct"])
    assert "808 of 1617" in out["assumptions"] and "12 (k+, k-) pairs" in out["assumptions"]


def test_ties_are_broken_by_sample_index():
    s = torch.zeros(6, dtype=torch.float64)
    y = torch.tensor([True, False, True, False, False, True])
    out = eps_lower_bound(s, y, k_plus=2, k_minus=2, design="independent")
    # top 2 = samples 0, 1 (1 member); bottom 2 = samples 4, 5 (1 non-member)
    assert out["correct"] == 2


def test_the_plan_design_keeps_the_confidence_under_randomized_response():
    """An eps-DP mechanism: randomized response on each membership bit (eps = 1), 4,000 plans of exactly
    200 members out of 400; the auditor guesses its 40 highest and 40 lowest outputs. The bound must
    exceed the true eps in at most 5% of runs (plus 3 standard errors of the rate) with the paper's
    p-value, and no more often with the plan's (conditioned) p-value."""
    runs, n, c, eps, k = 4000, 400, 200, 1.0, 40
    g = torch.Generator().manual_seed(0)
    member = torch.rand(runs, n, generator=g).argsort(1) < c  # a uniformly random c-subset per run
    keep = torch.rand(runs, n, generator=g) < math.exp(eps) / (1 + math.exp(eps))
    output = (member == keep).double() + 0.5 * torch.rand(runs, n, generator=g)  # random tie-break
    order = output.argsort(1, descending=True)
    ranked = torch.gather(member, 1, order)
    correct = ranked[:, :k].sum(1) + (~ranked[:, -k:]).sum(1)
    log_factor = plan_log_factor(n, c)
    assert log_factor == pytest.approx(n * math.log(2) - math.log(math.comb(n, c)), rel=1e-12)
    rates = {}
    for design, factor in (("independent", 0.0), ("half", log_factor)):
        eps_of = {v: _eps_from_counts(2 * k, v, n, 0.0, 0.05, factor) for v in correct.unique().tolist()}
        rates[design] = sum(eps_of[v] > eps for v in correct.tolist()) / runs
    assert rates["independent"] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs), rates
    assert rates["half"] <= rates["independent"], rates


@pytest.mark.parametrize("kwargs, match", [
    ({"k_plus": -1}, "k_plus must be None or an int in"),
    ({"k_minus": 2.5}, "k_minus"),
    ({"k_plus": 15, "k_minus": 10}, r"k_plus \+ k_minus must be in \[1, 20\]"),
    ({"k_plus": 0, "k_minus": 0}, "k_plus . k_minus"),
    ({"delta": 2.0}, "delta must be a number in"),
    ({"confidence": 1.0}, "confidence"),
    ({"design": "poisson"}, "design must be one of half, independent"),
])
def test_bad_input_names_the_argument(kwargs, match):
    s, y = _scores_with([1, 0] * 10)
    with pytest.raises(ValueError, match=match):
        eps_lower_bound(s, y, **kwargs)


def test_bad_scores_and_membership():
    with pytest.raises(ValueError, match="scores must be finite"):
        eps_lower_bound(torch.tensor([1.0, math.nan]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="is_member must have shape"):
        eps_lower_bound(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        eps_lower_bound(torch.tensor([1.0]), torch.tensor([True]))


# -- canaries (each included independently with probability 1/2) -------------------------------
from attacks import canary_eps_lower_bound  # noqa: E402


def test_canary_bound_is_zero_for_scores_that_ignore_inclusion():
    """The null, in the spirit of jax_privacy's fix for pure-noise scores: scores independent of
    the inclusion bits give eps_lb = 0 in at least 95% of 200 seeded audits. Without the
    Bonferroni correction over the guess counts, the best of the 10 pairs tried at m = 500
    gave eps_lb > 0 in 37 of these 200 audits (a blind search inflates the size)."""
    zeros, positives = 0, []
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        included = torch.rand(500, generator=g) < 0.5
        scores = torch.randn(500, generator=g, dtype=torch.float64)
        out = canary_eps_lower_bound(scores, included, delta=1e-5)
        assert out["count"] == 500 and out["candidates"] == 10
        if out["eps_lb"] == 0:
            zeros += 1
        else:
            positives.append(out["eps_lb"])
    assert zeros >= 190, f"{200 - zeros} of 200 null audits gave eps_lb > 0: {positives[:5]}"


def test_canary_bound_rises_with_the_number_of_perfectly_separated_canaries():
    bounds = []
    for m in (20, 100, 1000, 5000):
        included = torch.arange(m) % 2 == 0
        out = canary_eps_lower_bound(included.double(), included)  # scores 1 for included, 0 for the rest
        assert out["correct"] == out["guesses"] > 0
        bounds.append(out["eps_lb"])
    assert all(a < b for a, b in zip(bounds, bounds[1:])), bounds
    assert bounds[0] > 0
    # 1,000 canaries all guessed right at delta = 0 (500 + 500 guesses): q^1000 = 0.05 / 12 (12 pairs),
    # eps = logit(q) = 5.20; and delta = 1e-5 caps the same audit (the 2 m delta term).
    assert bounds[2] == pytest.approx(_logit((0.05 / 12) ** (1 / 1000)), abs=1e-6)
    half = torch.arange(1000) % 2 == 0
    capped = canary_eps_lower_bound(half.double(), half, delta=1e-5)
    assert 0 < capped["eps_lb"] < bounds[2]


def test_canary_bound_refuses_bad_input():
    with pytest.raises(ValueError, match="included"):
        canary_eps_lower_bound(torch.zeros(4), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="delta"):
        canary_eps_lower_bound(torch.zeros(4), torch.zeros(4, dtype=torch.bool), delta=2)
