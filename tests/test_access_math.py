"""The access-level scores (attacks/access.py) on seeded synthetic signals whose answer is known."""

import pytest
import torch

from attacks import (gaussian_fit, gaussian_lr, label_only, lira, reference_classifier, rmia, roc_metrics,
                     steps_lira)
from attacks.trajectory import trajectory_lira

N = 3000


def _plan(n, k, g):
    """The tool's plan: the target holds a random half; references come in complementary pairs,
    so every sample is IN for K/2 references and OUT for K/2."""
    target_in = torch.rand(n, generator=g) < 0.5
    rows = []
    for _ in range(k // 2):
        a = torch.rand(n, generator=g) < 0.5
        rows += [a, ~a]
    return target_in, torch.stack(rows)


def _features(seed, shift, cov=None, n=N, k=4):
    """x = a per-sample base (the sample's difficulty) + shift if the model trained on it + noise ~ N(0, cov)
    per model and sample. Returns x_target [F, N] float32, x_refs [K, F, N], ref_in [K, N], target_in [N]."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.as_tensor(shift, dtype=torch.float64)
    f = shift.numel()
    cov = torch.eye(f, dtype=torch.float64) if cov is None else torch.as_tensor(cov, dtype=torch.float64)
    target_in, ref_in = _plan(n, k, g)
    member = torch.cat([target_in[None], ref_in]).to(torch.float64)          # [1 + K, N]
    base = 2 * torch.randn(f, n, generator=g, dtype=torch.float64)
    noise = torch.einsum("ij,mjn->min", torch.linalg.cholesky(cov),
                         torch.randn(1 + k, f, n, generator=g, dtype=torch.float64))
    x = base[None] + shift[None, :, None] * member[:, None, :] + noise
    return x[0].float(), x[1:].float(), ref_in, target_in


def _auc(scores, is_member):
    return roc_metrics(scores, is_member)["auc"]


FEATURE_ATTACKS = {
    "gaussian_shared": lambda x, r, i: gaussian_lr(x, r, i, "shared"),
    "gaussian_diagonal": lambda x, r, i: gaussian_lr(x, r, i, "diagonal"),
    "classifier": lambda x, r, i: reference_classifier(x, r, i, seed=0),
}


# ---------------------------------------------------------------- features: spikes / membrane / multivariate steps

@pytest.mark.parametrize("attack", FEATURE_ATTACKS)
def test_features_shifted_for_members_are_detected(attack):
    x, r, ref_in, target_in = _features(0, [2.0, 2.0, -1.5, 0.0])
    assert _auc(FEATURE_ATTACKS[attack](x, r, ref_in), target_in) > 0.9


@pytest.mark.parametrize("attack", FEATURE_ATTACKS)
def test_features_independent_of_membership_give_chance(attack):
    x, r, ref_in, target_in = _features(1, [0.0, 0.0, 0.0, 0.0], cov=[[1, .5, 0, 0], [.5, 1, 0, 0],
                                                                      [0, 0, 1, 0], [0, 0, 0, 4]])
    assert 0.4 <= _auc(FEATURE_ATTACKS[attack](x, r, ref_in), target_in) <= 0.6


def test_only_the_gaussian_sees_a_shift_whose_direction_depends_on_the_sample():
    # Members move by +-1 per feature, the sign drawn per sample: the per-sample IN / OUT means
    # follow it; one linear boundary for all samples (the classifier's assumption) cannot.
    g = torch.Generator().manual_seed(20)
    target_in, ref_in = _plan(N, 4, g)
    member = torch.cat([target_in[None], ref_in]).double()
    sign = torch.where(torch.rand(4, N, generator=g) < 0.5, -1.0, 1.0).double()
    x = (2 * torch.randn(4, N, generator=g, dtype=torch.float64)[None] + sign[None] * member[:, None]
         + torch.randn(5, 4, N, generator=g, dtype=torch.float64))
    assert _auc(gaussian_lr(x[0], x[1:], ref_in), target_in) > 0.75
    assert 0.4 <= _auc(reference_classifier(x[0], x[1:], ref_in), target_in) <= 0.6


@pytest.mark.parametrize("seed", [2, 3])
def test_shared_covariance_beats_diagonal_when_members_move_against_the_correlation(seed):
    # Noise correlated 0.95 between two features; members move along (1, -1), where the noise has
    # variance 2 (1 - 0.95) = 0.1 against 1 per feature: only the full covariance sees the shift as large.
    x, r, ref_in, target_in = _features(seed, [0.4, -0.4], cov=[[1, .95], [.95, 1]])
    shared = _auc(gaussian_lr(x, r, ref_in, "shared"), target_in)
    diagonal = _auc(gaussian_lr(x, r, ref_in, "diagonal"), target_in)
    assert shared > 0.85
    assert diagonal < 0.65
    assert shared > diagonal + 0.2


def test_gaussian_lr_is_the_log_density_ratio_of_its_fit():
    x, r, ref_in, _ = _features(4, [1.0, 0.5, 0.0], cov=[[1, .3, 0], [.3, 2, .2], [0, .2, .5]], n=200)
    mvn = torch.distributions.MultivariateNormal
    for cov_kind in ("shared", "diagonal"):
        mu_in, mu_out, s = gaussian_fit(r, ref_in, cov_kind)
        want = (mvn(mu_in.T, covariance_matrix=s).log_prob(x.double().T)
                - mvn(mu_out.T, covariance_matrix=s).log_prob(x.double().T))
        torch.testing.assert_close(gaussian_lr(x, r, ref_in, cov_kind), want, rtol=1e-9, atol=1e-9)
        if cov_kind == "diagonal":
            assert torch.count_nonzero(s - torch.diag(torch.diag(s))) == 0


def test_gaussian_fit_means_and_pooled_covariance_by_hand():
    x, r, ref_in, _ = _features(5, [1.0, -1.0], n=50, k=6)
    r64 = r.double()
    mu_in, mu_out, s = gaussian_fit(r, ref_in, "shared", shrink=0.0)
    resid = []
    for j in range(50):
        ins, outs = r64[ref_in[:, j], :, j], r64[~ref_in[:, j], :, j]
        torch.testing.assert_close(mu_in[:, j], ins.mean(0))
        torch.testing.assert_close(mu_out[:, j], outs.mean(0))
        resid += [ins - ins.mean(0), outs - outs.mean(0)]
    resid = torch.cat(resid)                                                  # [K * N, F]
    cov = resid.T @ resid / len(resid)
    torch.testing.assert_close(s, cov + 1e-8 * torch.diag(torch.diag(cov)))


def test_gaussian_lr_on_one_feature_is_lira_with_a_fixed_variance():
    # With 2 IN and 2 OUT references the median is the mean, and the pooled variance is LiRA's
    # (mean var_in + mean var_out) / 2.
    x, r, ref_in, _ = _features(6, [1.0], n=500)
    want = lira(x[0], r[:, 0], ref_in, fix_variance=True)
    for cov_kind in ("shared", "diagonal"):
        torch.testing.assert_close(gaussian_lr(x, r, ref_in, cov_kind), want, rtol=1e-6, atol=1e-6)


def test_gaussian_lr_with_the_trajectory_shrink_is_the_trajectory_attack():
    x, r, ref_in, _ = _features(7, [0.5, 0.4, 0.3], cov=[[1, .8, .6], [.8, 1, .8], [.6, .8, 1]], n=300)
    # equal up to the variance floor (relative here, absolute 1e-8 there)
    torch.testing.assert_close(gaussian_lr(x, r, ref_in, shrink=0.1), trajectory_lira(x, r, ref_in),
                               rtol=1e-5, atol=1e-5)


def test_gaussian_lr_does_not_depend_on_feature_units():
    # Spike counts (thousands) next to potentials (about 1): the ridge is relative to each variance.
    x, r, ref_in, _ = _features(8, [1.0, 0.5], cov=[[1, .9], [.9, 1]], n=300)
    x, r = x.double(), r.double()
    scale = torch.tensor([[1000.0], [0.01]], dtype=torch.float64)
    for cov_kind in ("shared", "diagonal"):
        torch.testing.assert_close(gaussian_lr(x * scale + 7, r * scale + 7, ref_in, cov_kind),
                                   gaussian_lr(x, r, ref_in, cov_kind), rtol=1e-4, atol=1e-4)


def test_a_constant_feature_changes_nothing():
    # e.g. a spiking layer that never fires: variance 0, no NaN, no evidence
    x, r, ref_in, _ = _features(8, [1.0, 0.5], n=300)
    x3, r3 = torch.cat([x, torch.full((1, 300), 3.0)]), torch.cat([r, torch.full((4, 1, 300), 3.0)], 1)
    for attack in FEATURE_ATTACKS.values():
        torch.testing.assert_close(attack(x3, r3, ref_in), attack(x, r, ref_in))


def _classifier_by_hand(x, r, ref_in, c):
    """The leave-one-out calibration written out per row, and scikit-learn's logistic regression."""
    from sklearn.linear_model import LogisticRegression

    x, r = x.double(), r.double()
    k, f, n = r.shape
    rows, labels = [], []
    for i in range(k):
        others = torch.cat([r[:i], r[i + 1:]]).mean(0)                        # [F, N]
        rows.append((r[i] - others).T)
        labels.append(ref_in[i])
    rows, labels = torch.cat(rows), torch.cat(labels)
    target = (x - r.mean(0)).T
    mean, std = rows.mean(0), rows.std(0, correction=0)
    fit = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(((rows - mean) / std).numpy(), labels.numpy())
    return torch.from_numpy(fit.decision_function(((target - mean) / std).numpy()))


@pytest.mark.parametrize("l2", [1.0, 30.0])
def test_reference_classifier_is_a_regularised_logistic_regression_on_loo_calibrated_rows(l2):
    x, r, ref_in, _ = _features(9, [0.8, -0.3, 0.0], cov=[[1, .4, 0], [.4, 2, 0], [0, 0, .3]], n=400)
    got = reference_classifier(x, r, ref_in, l2=l2)
    torch.testing.assert_close(got, _classifier_by_hand(x, r, ref_in, 1 / l2), rtol=1e-5, atol=1e-5)


def test_scores_are_deterministic():
    x, r, ref_in, _ = _features(11, [1.0, 0.5])
    for attack in FEATURE_ATTACKS.values():
        assert torch.equal(attack(x, r, ref_in), attack(x.clone(), r.clone(), ref_in.clone()))
    # Newton's method from zero draws nothing at random: every seed gives the same logits.
    assert torch.equal(reference_classifier(x, r, ref_in, seed=0), reference_classifier(x, r, ref_in, seed=123))
    again = _features(11, [1.0, 0.5])
    assert torch.equal(gaussian_lr(*again[:3]), gaussian_lr(x, r, ref_in))
    assert gaussian_lr(x, r, ref_in).dtype == torch.float64


# ---------------------------------------------------------------- label

def _correctness(seed, gain, q=8, n=N, k=4):
    """Each sample has a difficulty: the chance d in [0.1, 0.8] that a model that did not train on it
    labels a query correctly; a model that trained on it does so with d + gain. Queries independent."""
    g = torch.Generator().manual_seed(seed)
    target_in, ref_in = _plan(n, k, g)
    d = 0.1 + 0.7 * torch.rand(n, generator=g)
    member = torch.cat([target_in[None], ref_in]).float()                    # [1 + K, N]
    rate = (d + gain * member)[:, None, :].expand(1 + k, q, n)
    correct = torch.rand(1 + k, q, n, generator=g) < rate
    return correct[0], correct[1:], ref_in, target_in


def test_label_only_detects_members_that_stay_correct_more_often():
    t, r, ref_in, target_in = _correctness(12, gain=0.2)
    calibrated = _auc(label_only(t, r, ref_in), target_in)
    raw = _auc(t.double().mean(0), target_in)
    assert calibrated > 0.75
    # calibration by the sample's difficulty is what makes it work: the raw rate mixes
    # hard members with easy non-members
    assert calibrated > raw + 0.03


def test_label_only_is_chance_when_correctness_does_not_depend_on_membership():
    t, r, ref_in, target_in = _correctness(13, gain=0.0)
    assert 0.4 <= _auc(label_only(t, r, ref_in), target_in) <= 0.6


def test_label_only_by_hand_and_without_out_references():
    t = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)               # rates 1, 0.5, 0
    r = torch.tensor([[[1, 0, 1], [1, 0, 1]],                                # ref 0: rates 1, 0, 1
                      [[0, 1, 1], [0, 1, 0]]], dtype=torch.bool)             # ref 1: rates 0, 1, 0.5
    ref_in = torch.tensor([[True, False, True], [False, True, True]])        # sample 2: no OUT reference
    want = torch.tensor([1 - 0, 0.5 - 0, 0 - 0.75], dtype=torch.float64)
    assert torch.equal(label_only(t, r, ref_in), want)
    assert torch.equal(label_only(t.int(), r.int(), ref_in.int()), want)     # 0/1 integers are accepted


# ---------------------------------------------------------------- steps

def _steps(seed, n=400, k=4, t=5):
    g = torch.Generator().manual_seed(seed)
    target_in, ref_in = _plan(n, k, g)
    member = torch.cat([target_in[None], ref_in]).float()
    base = torch.randn(t, n, generator=g)
    steps = base[None] + torch.linspace(0.5, 1.5, t)[None, :, None] * member[:, None, :] \
        + 0.7 * torch.randn(1 + k, t, n, generator=g)
    return steps[0], steps[1:], ref_in, target_in


@pytest.mark.parametrize("fix_variance", [False, True])
def test_steps_lira_averages_per_step_online_lira(fix_variance):
    st, sr, ref_in, _ = _steps(14)
    per_step = torch.stack([lira(st[i], sr[:, i], ref_in, fix_variance=fix_variance) for i in range(st.shape[0])])
    torch.testing.assert_close(steps_lira(st, sr, ref_in, fix_variance=fix_variance), per_step.mean(0),
                               rtol=1e-12, atol=1e-12)


def test_steps_lira_fixes_the_variance_below_128_references():
    st, sr, ref_in, _ = _steps(14)
    assert torch.equal(steps_lira(st, sr, ref_in), steps_lira(st, sr, ref_in, fix_variance=True))
    assert not torch.allclose(steps_lira(st, sr, ref_in), steps_lira(st, sr, ref_in, fix_variance=False))


def test_steps_lira_detects_members_and_one_step_is_lira():
    st, sr, ref_in, target_in = _steps(15, n=N)
    assert _auc(steps_lira(st, sr, ref_in), target_in) > 0.9
    # a per-sample sigma from 2 IN and 2 OUT references is noise: why the variance is fixed
    assert _auc(steps_lira(st, sr, ref_in, fix_variance=False), target_in) < 0.8
    torch.testing.assert_close(steps_lira(st[2:3], sr[:, 2:3], ref_in), lira(st[2], sr[:, 2], ref_in,
                                                                             fix_variance=True))


def test_rmia_scores_the_steps_as_queries():
    # the recipe of the module docstring: probabilities sigmoid(steps), rmia(per_query=True)
    st, sr, ref_in, _ = _steps(16, n=200)
    sz, srz, _, _ = _steps(17, n=150)
    p = lambda s: torch.sigmoid(s.double())                                  # noqa: E731
    got = rmia(p(st), p(sr), p(sz), p(srz), ref_in, per_query=True)
    per_step = torch.stack([rmia(p(st[i]), p(sr[:, i]), p(sz[i]), p(srz[:, i]), ref_in) for i in range(5)])
    torch.testing.assert_close(got, per_step.mean(0), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- bad input

_x, _r, _in, _ = _features(18, [1.0, 1.0], n=6)
_c, _cr, _cin, _ = _correctness(19, 0.2, q=3, n=6)
_half = _in.clone()
_half[:, 0] = True                                                           # sample 0: no OUT reference
_none_in = _in.clone()
_none_in[:, 1] = False                                                       # sample 1: no IN reference


@pytest.mark.parametrize("call, match", [
    (lambda: gaussian_lr(_x[0], _r, _in), "x_target must be 2-D"),
    (lambda: gaussian_lr(_x, _r[:, :1], _in), r"x_refs must have shape \[K, 2, 6\]"),
    (lambda: gaussian_lr(_x, _r, _in[:, :5]), r"ref_in must have shape \(4, 6\)"),
    (lambda: gaussian_lr(_x, _r, _half), "at least one OUT reference"),
    (lambda: gaussian_lr(_x, _r, _none_in), "at least one IN reference"),
    (lambda: gaussian_lr(_x, _r, _in, "full"), 'covariance must be "shared" or "diagonal"'),
    (lambda: gaussian_lr(_x, _r[:2], _in[:2]), "K >= 3"),
    (lambda: gaussian_lr(_x, _r, _in, shrink=2), r"shrink must be a number in \[0, 1\]"),
    (lambda: gaussian_lr(_x * float("nan"), _r, _in), "x_target must be finite"),
    (lambda: reference_classifier(_x, _r, torch.zeros(4, 6, dtype=torch.bool)), "both IN and OUT rows"),
    (lambda: reference_classifier(_x, _r[:, :, :5], _in), r"x_refs must have shape \[K, 2, 6\]"),
    (lambda: reference_classifier(_x, _r[:1], _in[:1]), "K >= 2"),
    (lambda: reference_classifier(_x, _r, _in, seed=0.5), "seed must be an integer"),
    (lambda: reference_classifier(_x, _r, _in, l2=0), "l2 must be a finite number > 0"),
    (lambda: label_only(_c[0], _cr, _cin), "correct_target must be a 2-D bool tensor"),
    (lambda: label_only(_c, _cr[:, :2], _cin), r"correct_refs must have shape \[K, 3, 6\]"),
    (lambda: label_only(_c.float() * 0.5, _cr, _cin), "correct_target must be a bool tensor"),
    (lambda: label_only(_c, _cr, _cin[:3]), r"ref_in must have shape \(4, 6\)"),
    (lambda: steps_lira(_x, _r, _half), "steps_lira needs at least one OUT reference"),
    (lambda: steps_lira(_x, _r, _none_in), "steps_lira needs at least one IN reference"),
    (lambda: steps_lira(_x, _r[:, :1], _in), r"steps_refs must have shape \[K, 2, 6\]"),
    (lambda: steps_lira(_x[:0], _r[:, :0], _in), "T >= 1"),
])
def test_bad_input_is_a_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
