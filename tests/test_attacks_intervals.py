"""Error bars: the vectorised bootstrap against roc_metrics on explicit resamples, DeLong against
pair counting, coverage on binormal scores with a known truth, t-intervals, verdicts, bad input."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from attacks import (
    FPR_LEVELS,
    delong_auc_interval,
    mean_interval,
    measurable,
    paired_difference,
    resolution_note,
    roc_bootstrap,
    roc_intervals,
    roc_metrics,
    verdict,
)
from attacks.intervals import METRICS, _Ranking, _replicate_metrics

ROOT = Path(__file__).resolve().parents[1]


def _binormal(n_in, n_out, mu, g):
    """Members ~ N(mu, 1), non-members ~ N(0, 1): AUC = Phi(mu / sqrt 2), TPR at FPR f = 1 - Phi(Phi^-1(1 - f) - mu)."""
    y = torch.arange(n_in + n_out) < n_in
    return torch.randn(n_in + n_out, generator=g, dtype=torch.float64) + mu * y, y


def _resample_metrics(s, y, members, nonmembers):
    """roc_metrics of one replicate, built as an explicit dataset from the drawn indices."""
    pos = torch.sort(s[y], descending=True).values
    neg = torch.sort(s[~y], descending=True).values
    scores = torch.cat([pos[members.long()], neg[nonmembers.long()]])
    member = torch.arange(scores.numel()) < members.numel()
    return roc_metrics(scores, member)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=40), st.integers(0, 2**31))
def test_replicates_equal_roc_metrics_of_the_resample_with_ties(pairs, seed):
    s = torch.tensor([float(v) for v, _ in pairs], dtype=torch.float64)
    y = torch.tensor([m for _, m in pairs])
    if y.all() or not y.any():
        return
    rank = _Ranking(s, y)
    g = torch.Generator().manual_seed(seed)
    members = torch.randint(rank.num_in, (3, rank.num_in), generator=g, dtype=torch.int32)
    nonmembers = torch.randint(rank.num_out, (3, rank.num_out), generator=g, dtype=torch.int32)
    # identity draws: the replicate is the data itself, so it must give the point estimate exactly
    members[0] = torch.arange(rank.num_in)
    nonmembers[0] = torch.arange(rank.num_out)
    for metrics in (list(METRICS), [m for m in METRICS if m != "auc"]):  # with and without the AUC path
        got = _replicate_metrics(rank, members, nonmembers, metrics)
        for b in range(3):
            want = _resample_metrics(s, y, members[b], nonmembers[b])
            for m in metrics:
                assert got[m][b].item() == want[m], (m, b)


def test_replicates_equal_roc_metrics_on_a_large_sample():
    """N_out = 3,000 with many ties: the TPR-only path counts the non-members itself, the AUC path
    shares its counts and reads TP from the member slots only when there are no ties (here: the
    member comparison)."""
    g = torch.Generator().manual_seed(0)
    s, y = _binormal(2000, 3000, 1.0, g)
    s = torch.round(s * 20) / 20  # many ties between members and non-members
    rank = _Ranking(s, y)
    members = torch.randint(rank.num_in, (4, rank.num_in), generator=g, dtype=torch.int32)
    nonmembers = torch.randint(rank.num_out, (4, rank.num_out), generator=g, dtype=torch.int32)
    tpr_only = [m for m in METRICS if m != "auc"]
    for metrics in (list(METRICS), tpr_only):
        got = _replicate_metrics(rank, members, nonmembers, metrics)
        for b in range(4):
            want = _resample_metrics(s, y, members[b], nonmembers[b])
            assert [got[m][b].item() for m in metrics] == [want[m] for m in metrics]


def test_intervals_are_seeded_and_hold_the_point_estimate():
    g = torch.Generator().manual_seed(1)
    s, y = _binormal(800, 800, 1.0, g)
    a = roc_intervals(s, y, num_bootstrap=300, seed=3, auc="bootstrap")
    assert a == roc_intervals(s, y, num_bootstrap=300, seed=3, auc="bootstrap")
    assert a != roc_intervals(s, y, num_bootstrap=300, seed=4, auc="bootstrap")
    point = roc_metrics(s, y)
    for m in ("auc", "tpr@1%fpr"):
        lo, hi = a[m]
        assert lo < point[m] < hi
    assert a["tpr@0.1%fpr"] is None  # N_out = 800 < 1,000
    reps = roc_bootstrap(s, y, num_bootstrap=300, seed=3, metrics=("auc", "tpr@1%fpr"))
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    assert tuple(torch.quantile(reps["tpr@1%fpr"], q).tolist()) == a["tpr@1%fpr"]
    assert tuple(torch.quantile(reps["auc"], q).tolist()) == a["auc"]


def test_same_intervals_in_another_process_with_another_thread_count():
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from attacks import roc_intervals\n"
        "g = torch.Generator().manual_seed(5)\n"
        "y = torch.arange(3000) < 1500\n"
        "s = torch.randn(3000, generator=g, dtype=torch.float64) + y\n"
        "print(repr(roc_intervals(s, y, num_bootstrap=200, seed=11, auc='bootstrap')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    g = torch.Generator().manual_seed(5)
    y = torch.arange(3000) < 1500
    s = torch.randn(3000, generator=g, dtype=torch.float64) + y
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = roc_intervals(s, y, num_bootstrap=200, seed=11, auc="bootstrap")
    finally:
        torch.set_num_threads(threads)
    assert out.stdout.strip() == repr(here)


def test_delong_matches_pair_counting_with_ties():
    g = torch.Generator().manual_seed(2)
    y = torch.rand(60, generator=g) < 0.4
    s = torch.randint(0, 6, (60,), generator=g).double()
    pos, neg = s[y].tolist(), s[~y].tolist()
    psi = [[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos]
    v10 = [sum(row) / len(neg) for row in psi]
    v01 = [sum(psi[i][j] for i in range(len(pos))) / len(pos) for j in range(len(neg))]
    auc = sum(v10) / len(pos)
    var = stats.tvar(v10) / len(pos) + stats.tvar(v01) / len(neg)
    half = stats.norm.ppf(0.975) * math.sqrt(var)
    lo, hi = delong_auc_interval(s, y)
    assert auc == pytest.approx(roc_metrics(s, y)["auc"], abs=1e-12)
    assert (lo, hi) == pytest.approx((auc - half, auc + half), abs=1e-12)


def test_delong_edge_cases():
    y = torch.tensor([True, True, False, False])
    assert delong_auc_interval(torch.tensor([3.0, 4.0, 1.0, 2.0]), y) == (1.0, 1.0)  # separated: no spread
    lo, hi = delong_auc_interval(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([True, False, False]))
    assert math.isnan(lo) and math.isnan(hi)  # one member: no variance


def test_intervals_cover_the_true_auc_and_tpr_at_the_nominal_rate():
    """400 binormal audits (mu = 1.5, 1,000 members + 1,000 non-members) drawn from one stream: each
    95% interval must cover the truth in 92-98% of them (the binomial 95% range around 95% for 400
    trials is 92.9-97.1%). The bootstrap uses B = 300 instead of 1,000 to keep this test at a few
    seconds: on these same audits B = 1,000 covered 95.75% (AUC) and 95.75% (TPR), B = 300 94.5% and
    95.75%, so the smaller B does not change the verdict. DeLong covered 95.0%."""
    mu, reps = 1.5, 400
    true_auc = stats.norm.cdf(mu / math.sqrt(2))
    true_tpr = 1 - stats.norm.cdf(stats.norm.ppf(0.99) - mu)
    g = torch.Generator().manual_seed(0)
    hits = {"delong": 0, "auc": 0, "tpr@1%fpr": 0}
    for r in range(reps):
        s, y = _binormal(1000, 1000, mu, g)
        lo, hi = delong_auc_interval(s, y)
        hits["delong"] += lo <= true_auc <= hi
        iv = roc_intervals(s, y, num_bootstrap=300, seed=r, auc="bootstrap", metrics=("auc", "tpr@1%fpr"))
        hits["auc"] += iv["auc"][0] <= true_auc <= iv["auc"][1]
        hits["tpr@1%fpr"] += iv["tpr@1%fpr"][0] <= true_tpr <= iv["tpr@1%fpr"][1]
    coverage = {k: v / reps for k, v in hits.items()}
    assert all(0.92 <= c <= 0.98 for c in coverage.values()), coverage


def test_default_auc_interval_is_delong():
    g = torch.Generator().manual_seed(3)
    s, y = _binormal(500, 1500, 0.8, g)
    iv = roc_intervals(s, y, num_bootstrap=50)
    assert iv["auc"] == delong_auc_interval(s, y)
    assert set(iv) == {"auc", "tpr@1%fpr", "tpr@0.1%fpr"} and iv["tpr@0.1%fpr"] is not None


def test_measurable_and_resolution_note():
    assert not measurable(FPR_LEVELS["tpr@0.1%fpr"], 808)
    assert resolution_note(FPR_LEVELS["tpr@0.1%fpr"], 808) == "n/a (N_out = 808 < 1,000)"
    assert measurable(FPR_LEVELS["tpr@0.1%fpr"], 1000) and resolution_note(1e-3, 1000) is None
    assert measurable(FPR_LEVELS["tpr@0%fpr"], 3)  # level 0: members above every non-member
    assert resolution_note(1e-4, 9999) == "n/a (N_out = 9,999 < 10,000)"
    assert measurable(0.01, 100) and not measurable(0.01, 99)
    # consistent with what roc_metrics can resolve: below 1 / N_out only FPR = 0 qualifies
    y = torch.arange(1808) < 1000
    s = torch.randn(1808, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + y
    m = roc_metrics(s, y)
    assert m["tpr@0.1%fpr"] == m["tpr@0%fpr"]


def test_mean_interval_by_hand():
    # mean 3, sd sqrt(2.5), t_{4, 0.975} = 2.7764451051977987
    lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (lo, hi) == pytest.approx((3 - half, 3 + half), abs=1e-12)
    lo90, hi90 = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0], level=0.9)
    assert lo < lo90 < 3 < hi90 < hi
    assert mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in mean_interval([0.7]))


def test_paired_difference_and_verdicts():
    snn = [0.60, 0.62, 0.58, 0.61]
    ann = [0.55, 0.56, 0.54, 0.57]
    mean, lo, hi = paired_difference(snn, ann)
    d = [a - b for a, b in zip(snn, ann)]
    assert mean == pytest.approx(sum(d) / 4) and (lo, hi) == pytest.approx(mean_interval(d))
    assert lo > 0
    assert verdict(lo, hi, +1) == "holds"
    assert verdict(lo, hi, -1) == "reversed"
    assert verdict(-0.01, 0.02, +1) == "not resolved at 95%"
    assert verdict(0.0, 0.02, +1) == "not resolved at 95%"  # touching 0 does not exclude it
    assert verdict(-0.03, -0.01, -1) == "holds"
    assert verdict(-0.01, 0.02, +1, level=0.9) == "not resolved at 90%"
    _, lo1, hi1 = paired_difference([0.6], [0.5])
    assert verdict(lo1, hi1, +1) == "not resolved at 95%"  # one pair: (nan, nan)


@pytest.mark.parametrize("call, match", [
    (lambda s, y: roc_intervals(s, y, num_bootstrap=0), "num_bootstrap"),
    (lambda s, y: roc_intervals(s, y, seed=-1), "seed"),
    (lambda s, y: roc_intervals(s, y, level=1.5), "level"),
    (lambda s, y: roc_intervals(s, y, metrics=("auc", "tpr@5%fpr")), "metrics"),
    (lambda s, y: roc_intervals(s, y, auc="exact"), "auc must be one of delong, bootstrap"),
    (lambda s, y: roc_intervals(s, torch.ones_like(y)), "is_member must hold both"),
    (lambda s, y: roc_intervals(s, y[:-1]), "is_member must have shape"),
    (lambda s, y: roc_intervals(torch.full_like(s, math.nan), y), "scores must be finite"),
    (lambda s, y: delong_auc_interval(s, y, level=0), "level"),
    (lambda s, y: mean_interval([]), "values"),
    (lambda s, y: mean_interval([1.0, math.inf]), "values must be finite"),
    (lambda s, y: paired_difference([1.0, 2.0], [1.0]), "same length"),
    (lambda s, y: verdict(0.1, 0.2, 0), "expected_sign"),
    (lambda s, y: verdict(0.2, 0.1, 1), "lo must be <= hi"),
    (lambda s, y: measurable(0.01, 0), "num_nonmembers"),
    (lambda s, y: measurable(2.0, 10), "level"),
])
def test_bad_input_names_the_argument(call, match):
    y = torch.arange(20) < 10
    s = torch.arange(20, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        call(s, y)
