"""ROC metrics against pair counting and threshold sweeps; downsampling; plots."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.functional.classification import binary_auroc, binary_roc

from attacks import FPR_LEVELS, downsample_roc, plot_roc, plot_score_histograms, roc_metrics


def _auc_pairs(scores, member):
    pos = [s for s, m in zip(scores, member) if m]
    neg = [s for s, m in zip(scores, member) if not m]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _tpr_at_py(scores, member, level):
    """Largest TPR over all thresholds 'score >= thr' (and predicting none) with FPR <= level."""
    pos, neg = sum(member), len(member) - sum(member)
    best = 0.0
    for thr in set(scores):
        tp = sum(s >= thr and m for s, m in zip(scores, member))
        fp = sum(s >= thr and not m for s, m in zip(scores, member))
        if fp / neg <= level:
            best = max(best, tp / pos)
    return best


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=40))
def test_auc_and_tpr_match_brute_force_with_ties(pairs):
    scores = [float(s) for s, _ in pairs]
    member = [m for _, m in pairs]
    if all(member) or not any(member):
        with pytest.raises(ValueError, match="is_member"):
            roc_metrics(torch.tensor(scores), torch.tensor(member))
        return
    m = roc_metrics(torch.tensor(scores), torch.tensor(member))
    assert m["auc"] == pytest.approx(_auc_pairs(scores, member), rel=1e-12)
    for key, level in FPR_LEVELS.items():
        assert m[key] == _tpr_at_py(scores, member, level)
    assert m["fpr"][0] == 0 and m["tpr"][0] == 0 and m["fpr"][-1] == 1 and m["tpr"][-1] == 1
    assert bool((m["fpr"].diff() >= 0).all() and (m["tpr"].diff() >= 0).all())


def test_tpr_levels_on_a_large_sample():
    g = torch.Generator().manual_seed(0)
    member = torch.rand(3000, generator=g) < 0.5
    scores = torch.randn(3000, generator=g, dtype=torch.float64) + member
    m = roc_metrics(scores, member)
    s, mem = scores.tolist(), member.tolist()
    neg = len(mem) - sum(mem)
    for key in ("tpr@1%fpr", "tpr@0.1%fpr"):
        # fast brute force: the threshold just above the (floor(level * neg) + 1)-th highest non-member
        k = int(FPR_LEVELS[key] * neg)
        thr = sorted((v for v, is_m in zip(s, mem) if not is_m), reverse=True)[k]
        assert m[key] == sum(v > thr and is_m for v, is_m in zip(s, mem)) / sum(mem)


def test_perfect_separation_and_reversed():
    member = torch.tensor([True] * 50 + [False] * 50)
    scores = torch.cat([torch.linspace(2, 3, 50), torch.linspace(0, 1, 50)])
    m = roc_metrics(scores, member)
    assert m["auc"] == 1.0 and m["tpr@0%fpr"] == 1.0 and m["tpr@0.01%fpr"] == 1.0
    assert roc_metrics(-scores, member)["auc"] == 0.0


def test_identical_distributions_give_half():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    scores = torch.randn(2 * n, generator=g)
    member = torch.arange(2 * n) < n
    # standard error of the AUC here: sqrt((2n + 1) / (12 n^2)) = 0.0029
    assert roc_metrics(scores, member)["auc"] == pytest.approx(0.5, abs=0.015)


def test_large_scores_do_not_tie():
    # sigmoid(30) and sigmoid(40) are both 1.0 in float32: a sigmoid-based ROC would call this 0.5
    m = roc_metrics(torch.tensor([40.0, 30.0, 35.0, 31.0]), torch.tensor([True, False, True, False]))
    assert m["auc"] == 1.0
    assert roc_metrics(torch.tensor([1e300, 1e299], dtype=torch.float64), torch.tensor([1, 0]))["auc"] == 1.0


def test_agrees_with_torchmetrics_on_probabilities():
    g = torch.Generator().manual_seed(1)
    member = torch.rand(500, generator=g) < 0.4
    scores = ((torch.rand(500, generator=g) * 0.8 + 0.2 * member) * 20).round() / 21  # ties, all in [0, 1)
    m = roc_metrics(scores, member)
    fpr, tpr, _ = binary_roc(scores, member.long())
    torch.testing.assert_close(m["fpr"], fpr.double())
    torch.testing.assert_close(m["tpr"], tpr.double())
    assert m["auc"] == pytest.approx(binary_auroc(scores, member.long()).item(), abs=1e-6)


@pytest.mark.parametrize(
    "scores, member, name",
    [
        (torch.tensor([0.1, 0.2]), torch.tensor([True, True]), "is_member"),
        (torch.tensor([0.1, 0.2]), torch.tensor([False, False]), "is_member"),
        (torch.tensor([0.1, 0.2, 0.3]), torch.tensor([True, False]), "is_member"),
        (torch.tensor([0.1, float("nan")]), torch.tensor([True, False]), "scores"),
        (torch.tensor([0.1, float("inf")]), torch.tensor([True, False]), "scores"),
        (torch.tensor([[0.1, 0.2]]), torch.tensor([True, False]), "scores"),
        (torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.0]), "is_member"),
    ],
)
def test_bad_input(scores, member, name):
    with pytest.raises(ValueError, match=name):
        roc_metrics(scores, member)


def test_downsample_keeps_endpoints_levels_and_corners():
    g = torch.Generator().manual_seed(0)
    member = torch.rand(50_000, generator=g) < 0.5
    scores = torch.randn(50_000, generator=g, dtype=torch.float64) + member
    m = roc_metrics(scores, member)
    fpr, tpr = downsample_roc(m["fpr"], m["tpr"], max_points=500)
    assert len(fpr) <= 500 and len(fpr) == len(tpr)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert bool((fpr.diff() >= 0).all())
    # a subset of the original points
    original = set(zip(m["fpr"].tolist(), m["tpr"].tolist()))
    assert set(zip(fpr.tolist(), tpr.tolist())) <= original
    for key, level in FPR_LEVELS.items():
        assert tpr[fpr <= level].max().item() == m[key]
    # low-FPR resolution: at least 100 points below FPR 1% (log-spaced grid)
    assert int((fpr < 0.01).sum()) >= 100
    short = downsample_roc(m["fpr"][:100], m["tpr"][:100])
    assert torch.equal(short[0], m["fpr"][:100])
    with pytest.raises(ValueError, match="max_points"):
        downsample_roc(m["fpr"], m["tpr"], max_points=3)
    with pytest.raises(ValueError, match="non-decreasing"):
        downsample_roc(m["fpr"].flip(0), m["tpr"])


def test_plots_write_pngs(tmp_path):
    g = torch.Generator().manual_seed(0)
    member = torch.rand(400, generator=g) < 0.5
    a = torch.randn(400, generator=g) + member
    b = torch.randn(400, generator=g) + 0.3 * member
    ma = roc_metrics(a, member)
    out = plot_roc({"attack_a": ma, "attack_b": (roc_metrics(b, member)["fpr"], roc_metrics(b, member)["tpr"])},
                   tmp_path / "sub" / "roc.png", title="test")
    hist = plot_score_histograms(a, member, tmp_path / "hist.png", title="scores")
    for path in (out, hist):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="curves"):
        plot_roc({}, tmp_path / "empty.png")
