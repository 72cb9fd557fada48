"""Attack-P, Attack-R, reference ratio and LiRA against slow re-statements in Python."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import attack_p, attack_r, lira, reference_ratio


def _setting(n, k, seed, min_in=1, min_out=1):
    """Random signals and a ref_in where every sample has >= min_in IN and >= min_out OUT references."""
    g = torch.Generator().manual_seed(seed)
    ref_in = torch.rand(k, n, generator=g) < 0.5
    ref_in[:min_in] = True
    ref_in[min_in:min_in + min_out] = False
    ref_in = ref_in[torch.randperm(k, generator=g)]
    return torch.randn(n, generator=g), torch.randn(k, n, generator=g) * 2 + 0.5, ref_in


# ---------------------------------------------------------------- Attack-P / R, ratio

def test_attack_p_is_the_signal_in_float64():
    t = torch.tensor([0.1, 0.9, 0.5], dtype=torch.float32)
    assert torch.equal(attack_p(t), t.double())


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_attack_r_counts_out_references_below(data):
    n, k = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 6))
    grid = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])  # coarse: many ties with target
    t = data.draw(st.lists(grid, min_size=n, max_size=n))
    r = [data.draw(st.lists(grid, min_size=n, max_size=n)) for _ in range(k)]
    ref_in = [data.draw(st.lists(st.booleans(), min_size=n, max_size=n)) for _ in range(k)]
    for j in range(n):
        ref_in[data.draw(st.integers(0, k - 1))][j] = False  # at least one OUT
    got = attack_r(torch.tensor(t), torch.tensor(r), torch.tensor(ref_in))
    for j in range(n):
        outs = [r[i][j] for i in range(k) if not ref_in[i][j]]
        assert got[j].item() == sum(v <= t[j] for v in outs) / len(outs)
    none = attack_r(torch.tensor(t), torch.tensor(r))  # ref_in None: every reference OUT
    assert none.tolist() == [sum(r[i][j] <= t[j] for i in range(k)) / k for j in range(n)]


def test_reference_ratio():
    t = torch.tensor([0.5, 0.2, 0.0])
    r = torch.tensor([[0.25, 0.4, 0.0], [0.75, 0.0, 0.0]])
    got = reference_ratio(t, r)
    assert got.dtype == torch.float64
    assert got[:2].tolist() == pytest.approx([0.5 / 0.5, 0.2 / 0.2])
    assert got[2].item() == 0.0  # 0 / floored 0, not NaN


# ---------------------------------------------------------------- LiRA

def _log_normal_py(x, mu, sigma):
    return -0.5 * math.log(2 * math.pi * sigma**2) - (x - mu) ** 2 / (2 * sigma**2)


def _log_cdf_py(x):
    if x > -30:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2)))
    # erfc underflows: Mills-ratio series, relative error < 1e-11 at x <= -30
    x2 = x * x
    return -x2 / 2 - math.log(-x) - 0.5 * math.log(2 * math.pi) + math.log(1 - 1 / x2 + 3 / x2**2 - 15 / x2**3)


def _lira_py(t, r, ref_in, online, fix_variance, offline_test="one_sided"):
    k, n = len(r), len(t)
    ins = [[r[i][j] for i in range(k) if ref_in[i][j]] for j in range(n)]
    outs = [[r[i][j] for i in range(k) if not ref_in[i][j]] for j in range(n)]
    var_in = [statistics.pvariance(v) if v else 0.0 for v in ins]
    var_out = [statistics.pvariance(v) for v in outs]
    if fix_variance:
        pooled = (sum(var_in) / n + sum(var_out) / n) / 2 if online else sum(var_out) / n
        var_in = var_out = [pooled] * n
    scores = []
    for j in range(n):
        s_out = max(math.sqrt(var_out[j]), 1e-8)
        mu_out = statistics.median(outs[j])
        if online:
            s_in = max(math.sqrt(var_in[j]), 1e-8)
            scores.append(_log_normal_py(t[j], statistics.median(ins[j]), s_in) - _log_normal_py(t[j], mu_out, s_out))
        elif offline_test == "one_sided":
            scores.append(_log_cdf_py((t[j] - mu_out) / s_out))
        else:
            scores.append(-_log_normal_py(t[j], mu_out, s_out))
    return scores


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("fix_variance", [False, True])
@pytest.mark.parametrize("k", [4, 5, 8])
def test_lira_matches_gaussian_restatement(online, fix_variance, k):
    # >= 2 IN and OUT references per sample, so sigma > 0 (the floor has its own test)
    t, r, ref_in = _setting(n=40, k=k, seed=k, min_in=2, min_out=2)
    got = lira(t, r, ref_in, online=online, fix_variance=fix_variance)
    want = _lira_py(t.double().tolist(), r.double().tolist(), ref_in.tolist(), online, fix_variance)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("fix_variance", [False, True])
def test_lira_offline_two_sided(fix_variance):
    t, r, ref_in = _setting(n=30, k=6, seed=1, min_in=2, min_out=2)
    got = lira(t, r, ref_in, online=False, fix_variance=fix_variance, offline_test="two_sided")
    want = _lira_py(t.double().tolist(), r.double().tolist(), ref_in.tolist(), False, fix_variance, "two_sided")
    assert got.tolist() == pytest.approx(want, rel=1e-9)


def test_lira_median_of_two_is_their_mean_and_sigma_is_floored():
    # IN references 1 and 3: mu_in = 2 (torch.median would say 1). OUT all 0: sigma_out floored to 1e-8.
    t = torch.tensor([2.0])
    r = torch.tensor([[1.0], [3.0], [0.0], [0.0]])
    ref_in = torch.tensor([[True], [True], [False], [False]])
    got = lira(t, r, ref_in).item()
    assert got == pytest.approx(_log_normal_py(2.0, 2.0, 1.0) - _log_normal_py(2.0, 0.0, 1e-8))
    assert math.isfinite(lira(torch.tensor([1e-8]), r, ref_in, online=False).item())  # log Phi(1)


def test_lira_float32_inputs_give_float64_scores():
    t, r, ref_in = _setting(n=10, k=4, seed=3)
    assert torch.equal(lira(t.float(), r.float(), ref_in), lira(t.float().double(), r.float().double(), ref_in))


def test_lira_online_orders_members_first():
    # members' signals come from the IN distribution: online LiRA must separate them
    g = torch.Generator().manual_seed(0)
    n, k = 400, 8
    ref_in = torch.zeros(k, n, dtype=torch.bool)
    ref_in[0::2] = torch.rand(k // 2, n, generator=g) < 0.5
    ref_in[1::2] = ~ref_in[0::2]
    r = torch.randn(k, n, generator=g) + 3 * ref_in
    member = torch.rand(n, generator=g) < 0.5
    t = torch.randn(n, generator=g) + 3 * member
    s = lira(t, r, ref_in)
    assert s[member].mean() > s[~member].mean() + 5


# ---------------------------------------------------------------- bad input

def _args():
    t, r, ref_in = _setting(n=6, k=4, seed=0)
    return t, r, ref_in


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda t, r, m: (t.clone().fill_(float("nan")), r, m), "target"),
        (lambda t, r, m: (t, r.clone().fill_(float("inf")), m), "references"),
        (lambda t, r, m: (t, r[:, :-1], m), "references"),
        (lambda t, r, m: (t, r[:0], m[:0]), "references"),  # K = 0
        (lambda t, r, m: (t, r, m[:, :-1]), "ref_in"),
        (lambda t, r, m: (t, r, m.float() * 0.5), "ref_in"),
        (lambda t, r, m: (t[None], r, m), "target"),
    ],
)
def test_bad_input_names_the_argument(change, name):
    t, r, m = change(*_args())
    for fn in (lambda: attack_r(t, r, m), lambda: lira(t, r, m), lambda: lira(t, r, m, online=False)):
        with pytest.raises(ValueError, match=name):
            fn()


def test_lira_needs_in_and_out_references():
    t, r, m = _args()
    with pytest.raises(ValueError, match="IN reference"):
        lira(t, r, None)  # None: all OUT, online impossible
    m = m.clone()
    m[:, 0] = True
    with pytest.raises(ValueError, match="OUT reference"):
        lira(t, r, m, online=False)
    with pytest.raises(ValueError, match="OUT reference"):
        attack_r(t, r, m)
    with pytest.raises(ValueError, match="offline_test"):
        lira(t, r, ~m, online=False, offline_test="both")


def test_reference_ratio_rejects_non_probabilities():
    with pytest.raises(ValueError, match="target"):
        reference_ratio(torch.tensor([1.5]), torch.tensor([[0.5]]))
    with pytest.raises(ValueError, match="references"):
        reference_ratio(torch.tensor([0.5]), torch.tensor([[-0.1]]))
