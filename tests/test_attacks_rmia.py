"""RMIA against the brute-force pairwise definition, invariances, tie-break, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import reference_ratio, rmia, roc_metrics
from attacks.rmia import _count_dominated

TINY = torch.finfo(torch.float64).tiny


def _pr_py(values, ins, a):
    """Pr(.) of one sample from its K reference probabilities (Python floats)."""
    if a is None:
        return max(sum(values) / len(values), TINY)
    outs = [v for v, i in zip(values, ins) if not i]
    return max((1 + a) / 2 * (sum(outs) / len(outs)) + (1 - a) / 2, TINY)


def _div(x, y):  # IEEE division (Python raises on / 0): x / 0 is inf, 0 / 0 is NaN (never > gamma)
    return x / y if y else (float("nan") if x == 0 else float("inf"))


def _rmia_py(t, r, tz, rz, ref_in, a, gamma):
    """The definition, pair by pair."""
    k = len(r)
    ratio_x = [t[j] / _pr_py([r[i][j] for i in range(k)], [ref_in[i][j] for i in range(k)], a)
               for j in range(len(t))]
    ratio_z = [tz[j] / _pr_py([rz[i][j] for i in range(k)], [False] * k, a) for j in range(len(tz))]
    return [sum(_div(rx, rzj) > gamma for rzj in ratio_z) / len(ratio_z) for rx in ratio_x], ratio_x


def _plan(k, n, g):
    """Complementary reference pairs (+ a last unpaired one when K is odd): IN and OUT for every sample."""
    ref_in = torch.zeros(k, n, dtype=torch.bool)
    for i in range(0, k - 1, 2):
        ref_in[i] = torch.rand(n, generator=g) < 0.5
        ref_in[i + 1] = ~ref_in[i]
    if k % 2:
        ref_in[-1] = torch.rand(n, generator=g) < 0.5
    return ref_in


def _continuous(n=300, z=200, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g, dtype=torch.float64), torch.rand(k, n, generator=g, dtype=torch.float64),
            torch.rand(z, generator=g, dtype=torch.float64), torch.rand(k, z, generator=g, dtype=torch.float64),
            _plan(k, n, g))


# Probabilities on a grid of step 1/16: sums and means of up to 4 of them are exact in
# float64, so the re-statement computes bit-identical ratios, and ties abound.
GRID = st.sampled_from([i / 16 for i in range(17)])


@settings(max_examples=80, deadline=None)
@given(data=st.data(), a=st.sampled_from([None, 0.0, 0.5, 1.0]), gamma=st.sampled_from([1.0, 0.5, 2.0, 1.25]))
def test_matches_pairwise_definition_with_ties(data, a, gamma):
    n, z, k = data.draw(st.integers(1, 10)), data.draw(st.integers(1, 10)), data.draw(st.sampled_from([2, 4]))
    t = data.draw(st.lists(GRID, min_size=n, max_size=n))
    r = [data.draw(st.lists(GRID, min_size=n, max_size=n)) for _ in range(k)]
    tz = data.draw(st.lists(GRID, min_size=z, max_size=z))
    rz = [data.draw(st.lists(GRID, min_size=z, max_size=z)) for _ in range(k)]
    first = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    ref_in = [first, [not b for b in first]] * (k // 2)  # every sample IN and OUT at least once
    args = (torch.tensor(t), torch.tensor(r), torch.tensor(tz), torch.tensor(rz), torch.tensor(ref_in))
    want, ratio = _rmia_py(t, r, tz, rz, ref_in, a, gamma)
    assert rmia(*args, offline_a=a, gamma=gamma, tie_break=False).tolist() == want
    broken = rmia(*args, offline_a=a, gamma=gamma)
    assert all(0 <= b - w < 1 / (2 * z) for b, w in zip(broken.tolist(), want))
    for i in range(n):  # same order as the grid scores, then by ratio(x)
        for j in range(n):
            if want[i] < want[j] or (want[i] == want[j] and ratio[i] < ratio[j]):
                assert broken[i] <= broken[j]
            if want[i] < want[j]:
                assert broken[i] < broken[j]


def test_matches_pairwise_on_continuous_data_with_odd_gamma():
    t, r, tz, rz, ref_in = _continuous(n=200, z=150, k=5)
    for a in (None, 0.3):
        want, _ = _rmia_py(t.tolist(), r.tolist(), tz.tolist(), rz.tolist(), ref_in.tolist(), a, 1.0)
        got = rmia(t, r, tz, rz, ref_in, offline_a=a, tie_break=False)
        assert got.tolist() == pytest.approx(want, abs=1e-12)  # ratios may differ by an ulp in summation order


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), gamma=st.floats(0.01, 100), ties=st.booleans())
def test_sorted_count_equals_pairwise_count_exactly(seed, gamma, ties):
    # The counting step alone, on the same ratios: bit-exact, including gamma != 1
    # (where t = ratio / gamma and the predicate ratio / ratio_z > gamma round differently).
    g = torch.Generator().manual_seed(seed)
    r_x = torch.rand(1, 300, generator=g, dtype=torch.float64) * 3
    r_z = torch.rand(1, 200, generator=g, dtype=torch.float64) * 3
    if ties:
        r_x, r_z = (r_x * 8).round() / 8, (r_z * 8).round() / 8
        r_x[0, :5] = r_z[0, :5] * gamma
    brute = (r_x[0, :, None] / r_z[0, None, :] > gamma).sum(1)
    assert torch.equal(_count_dominated(r_x, torch.sort(r_z).values, gamma)[0], brute)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), power=st.integers(0, 20), a=st.sampled_from([None, 0.5]))
def test_unchanged_when_target_probabilities_scaled_by_power_of_two(data, power, a):
    n, z = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    t = torch.tensor(data.draw(st.lists(GRID, min_size=n, max_size=n)))
    tz = torch.tensor(data.draw(st.lists(GRID, min_size=z, max_size=z)))
    g = torch.Generator().manual_seed(n * 100 + z)
    r, rz, ref_in = torch.rand(4, n, generator=g), torch.rand(4, z, generator=g), _plan(4, n, g)
    c = 2.0**-power
    for tie_break in (False, True):
        base = rmia(t, r, tz, rz, ref_in, a, tie_break=tie_break)
        assert torch.equal(rmia(t * c, r, tz * c, rz, ref_in, a, tie_break=tie_break), base)


@pytest.mark.parametrize("c", [0.37, 0.9, 1e-3])
def test_unchanged_when_target_probabilities_scaled(c):
    t, r, tz, rz, ref_in = _continuous()
    for a in (None, 0.3):
        assert torch.equal(rmia(t * c, r, tz * c, rz, ref_in, a, tie_break=False),
                           rmia(t, r, tz, rz, ref_in, a, tie_break=False))
        torch.testing.assert_close(rmia(t * c, r, tz * c, rz, ref_in, a), rmia(t, r, tz, rz, ref_in, a),
                                   rtol=0, atol=1e-12)


def test_auc_equals_that_of_the_simple_ratio():
    t, r, tz, rz, ref_in = _continuous(n=500, z=100)
    member = torch.rand(500, generator=torch.Generator().manual_seed(5)) < 0.5
    t = torch.where(member, t.sqrt(), t)  # some signal
    pr = (1 + 0.3) / 2 * torch.where(ref_in, 0.0, r).sum(0) / (~ref_in).sum(0) + (1 - 0.3) / 2
    ratio_auc = roc_metrics(t / pr, member)["auc"]
    assert roc_metrics(rmia(t, r, tz, rz, ref_in, offline_a=0.3), member)["auc"] == pytest.approx(ratio_auc, abs=1e-15)
    # online, Pr(x) is the mean over all references: the ranking of reference_ratio
    assert roc_metrics(rmia(t, r, tz, rz, ref_in), member)["auc"] == roc_metrics(reference_ratio(t, r), member)["auc"]
    # without the tie-break the grid merges ratios: AUC can only move through ties
    assert roc_metrics(rmia(t, r, tz, rz, ref_in, offline_a=0.3, tie_break=False), member)["auc"] != ratio_auc


def test_tie_break_restores_low_fpr_tpr_with_small_population():
    # Z = 180 as on digits. Log-ratios: population N(0, 0.5), non-members N(0, 0.75),
    # members N(0.75, 0.75): ~4% of non-members exceed every z ratio and share the top
    # score 1.0, so no threshold reaches TPR > 0 at FPR <= 1% without the tie-break.
    g = torch.Generator().manual_seed(0)
    n, z, base = 4000, 180, 0.01
    member = torch.arange(n) < n // 2
    log_ratio = torch.randn(n, generator=g, dtype=torch.float64) * 0.75 + 0.75 * member
    t = base * log_ratio.exp()
    tz = base * (torch.randn(z, generator=g, dtype=torch.float64) * 0.5).exp()
    r, rz = torch.full((2, n), base, dtype=torch.float64), torch.full((2, z), base, dtype=torch.float64)
    ref_in = torch.stack([member, ~member])
    plain = roc_metrics(rmia(t, r, tz, rz, ref_in, tie_break=False), member)
    broken = roc_metrics(rmia(t, r, tz, rz, ref_in), member)
    assert plain["tpr@1%fpr"] == 0.0 and plain["auc"] > 0.7
    assert broken["tpr@1%fpr"] > 0.04  # ~9% expected: N(0.75, 0.75) above the 99th percentile of N(0, 0.75)
    assert broken["auc"] >= plain["auc"] - 1e-3


def test_per_query_averages_query_scores():
    g = torch.Generator().manual_seed(1)
    q, n, z, k = 3, 50, 40, 4
    t, tz = torch.rand(q, n, generator=g, dtype=torch.float64), torch.rand(q, z, generator=g, dtype=torch.float64)
    r, rz = torch.rand(k, q, n, generator=g, dtype=torch.float64), torch.rand(k, q, z, generator=g, dtype=torch.float64)
    ref_in = _plan(k, n, g)
    for a in (None, 0.5):
        per_q = [_rmia_py(t[i].tolist(), r[:, i].tolist(), tz[i].tolist(), rz[:, i].tolist(), ref_in.tolist(), a, 1.0)[0]
                 for i in range(q)]
        want = [sum(col) / q for col in zip(*per_q)]
        got = rmia(t, r, tz, rz, ref_in, a, tie_break=False, per_query=True)
        assert got.tolist() == pytest.approx(want, abs=1e-12)
        # per_query=False averages the signals over queries first
        averaged = rmia(t.mean(0), r.mean(1), tz.mean(0), rz.mean(1), ref_in, a)
        assert torch.equal(rmia(t, r, tz, rz, ref_in, a), averaged)


def test_float32_inputs():
    t, r, tz, rz, ref_in = _continuous()
    f32 = [x.float() for x in (t, r, tz, rz)]
    got = rmia(*f32, ref_in)
    assert got.dtype == torch.float64
    assert torch.equal(got, rmia(*[x.double() for x in f32], ref_in))


def test_all_zero_population_ratios_tie_rather_than_break_scale_invariance():
    # Every z ratio 0: each x with ratio > 0 dominates all z. Ordering those x by a function
    # of ratio(x) alone would change when the target's probabilities are scaled (the
    # invariance the issue asks for), so they share the top score.
    t = torch.tensor([0.2, 0.4, 0.0], dtype=torch.float64)
    r = torch.full((2, 3), 0.5, dtype=torch.float64)
    ref_in = torch.tensor([[True, False, True], [False, True, False]])
    s = rmia(t, r, torch.zeros(4), torch.full((2, 4), 0.5), ref_in)
    assert s[2] < s[0] == s[1] and 1.0 <= s[0] < 1 + 1 / 8
    assert torch.equal(rmia(t * 0.5, r, torch.zeros(4), torch.full((2, 4), 0.5), ref_in), s)


# ---------------------------------------------------------------- bad input

def _good():
    return dict(zip(("target", "references", "target_z", "references_z", "ref_in"), _continuous(n=8, z=6)))


@pytest.mark.parametrize(
    "change, name",
    [
        ({"target": torch.full((8,), float("nan"))}, "target"),
        ({"references": torch.full((4, 8), float("inf"))}, "references"),
        ({"target": torch.full((8,), 1.5)}, "target"),
        ({"target_z": torch.full((6,), -0.1)}, "target_z"),
        ({"references_z": torch.full((4, 6), 2.0)}, "references_z"),
        ({"references": torch.rand(4, 7)}, "references"),
        ({"references": torch.rand(0, 8), "references_z": torch.rand(0, 6), "ref_in": torch.zeros(0, 8, dtype=torch.bool)},
         "references"),
        ({"references_z": torch.rand(3, 6)}, "references_z"),
        ({"target_z": torch.rand(2, 6)}, "target_z"),
        ({"target_z": torch.rand(0)}, "target_z"),
        ({"ref_in": torch.zeros(4, 7, dtype=torch.bool)}, "ref_in"),
        ({"ref_in": None}, "ref_in"),  # online: no IN reference at all
        ({"offline_a": 1.5}, "offline_a"),
        ({"offline_a": -0.1}, "offline_a"),
        ({"offline_a": 0.5, "ref_in": torch.ones(4, 8, dtype=torch.bool)}, "ref_in"),  # offline: no OUT
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": float("inf")}, "gamma"),
        ({"tie_break": "yes"}, "tie_break"),
    ],
)
def test_bad_input_names_the_argument(change, name):
    kwargs = {**_good(), **change}
    with pytest.raises(ValueError, match=name):
        rmia(**kwargs)
