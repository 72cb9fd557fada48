"""Signals: true-class probability and rescaled logit against direct re-statements."""

import decimal
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import rescaled_logit, true_class_probability


def _softmax_py(row, temperature=1.0):
    m = max(row)
    e = [math.exp((v - m) / temperature) for v in row]
    return [v / sum(e) for v in e]


def test_true_class_probability_matches_softmax_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0], [-1.0, 3.0, 0.5]])
    labels = torch.tensor([0, 2, 1])
    for temperature in (1.0, 0.5, 3.0):
        got = true_class_probability(logits, labels, temperature=temperature)
        want = [_softmax_py(r, temperature)[y] for r, y in zip(logits.tolist(), labels.tolist())]
        assert got.dtype == torch.float64
        assert got.tolist() == pytest.approx(want, rel=1e-12)


def test_labels_broadcast_over_queries():
    logits = torch.randn(3, 5, 4)  # [Q, N, C]
    labels = torch.randint(0, 4, (5,))
    got = true_class_probability(logits, labels)
    assert got.shape == (3, 5)
    for q in range(3):
        assert torch.equal(got[q], true_class_probability(logits[q], labels))


def test_probability_kept_below_one_in_float64():
    # In float32 softmax gives exactly 1.0 here; float64 keeps 1 - e^-20.
    p = true_class_probability(torch.tensor([[20.0, 0.0]]), torch.tensor([0]))
    assert p.item() < 1.0
    assert 1.0 - p.item() == pytest.approx(1 / (1 + math.exp(20)), rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-15, 15), min_size=2, max_size=6), st.data())
def test_rescaled_logit_is_log_odds(row, data):
    # log p - log(1 - p) straight from the definition, in 50-digit decimals: 1 - p
    # down to e^-30 keeps 35 digits (in float64 it would keep about 3).
    y = data.draw(st.integers(0, len(row) - 1))
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        e = [decimal.Decimal(v).exp() for v in row]
        p = e[y] / sum(e)
        want = float(p.ln() - (1 - p).ln())
    got = rescaled_logit(torch.tensor([row], dtype=torch.float64), torch.tensor([y])).item()
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_rescaled_logit_is_stable_for_huge_margins():
    got = rescaled_logit(torch.tensor([[1000.0, 0.0, 0.0], [0.0, 1000.0, 1000.0]]), torch.tensor([0, 0]))
    assert got[0].item() == pytest.approx(1000 - math.log(2))
    assert got[1].item() == pytest.approx(-1000 - math.log(2))


@pytest.mark.parametrize(
    "logits, labels, kwargs, name",
    [
        (torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), {}, "logits"),
        (torch.tensor([[float("inf"), 0.0]]), torch.tensor([0]), {}, "logits"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), {}, "labels"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), {}, "labels"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), {}, "labels"),
        (torch.zeros(2, 1), torch.tensor([0, 0]), {}, "logits"),
        (torch.zeros(2, 3), torch.tensor([0, 1]), {"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_input_names_the_argument(logits, labels, kwargs, name):
    with pytest.raises(ValueError, match=name):
        true_class_probability(logits, labels, **kwargs)
    if not kwargs:
        with pytest.raises(ValueError, match=name):
            rescaled_logit(logits, labels)
