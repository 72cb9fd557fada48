"""query_logits / query_signals: sample order, de-duplication, modes, SNN time steps."""

import pytest
import torch
from torch import nn

from attacks import flip, input_dropout, query_logits, query_signals, rescaled_logit, true_class_probability

N, C = 23, 3


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(N, 1, 4, 4, generator=g), torch.randint(0, C, (N,), generator=g)


def _batches(x, y, order, size):
    """Loader stand-in: any iterable of (x, y, index) batches."""
    order = torch.as_tensor(order)
    return [(x[order[i:i + size]], y[order[i:i + size]], order[i:i + size]) for i in range(0, len(order), size)]


def _model():
    torch.manual_seed(0)
    # Dropout makes train mode visible: in eval mode the outputs are deterministic.
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, C))


class TinySNN(nn.Module):
    """Accepts [B, ...] or [T, B, ...]; records the shapes it saw."""

    def __init__(self, T=3):
        super().__init__()
        self.T = T
        self.fc = nn.Linear(16, C)
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        if x.ndim == 4:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        return self.fc(x.flatten(2)).mean(0)


def test_logits_in_sample_order_with_duplicates_and_shuffle():
    x, y = _data()
    order = torch.randperm(N, generator=torch.Generator().manual_seed(1)).tolist()
    order += order[:4]  # DistributedSampler-style padding: samples repeated
    model = _model().train()
    strategy = input_dropout(0.3, 2)
    logits, labels = query_logits(model, _batches(x, y, order, 5), strategy, seed=3)
    assert logits.shape == (2, N, C) and logits.dtype == torch.float32
    assert torch.equal(labels, y)
    model.eval()
    with torch.no_grad():  # the slow way: one sample at a time
        for i in range(N):
            for q in range(2):
                want = model(strategy.apply(x[i:i + 1], torch.tensor([i]), q, 3))[0]
                torch.testing.assert_close(logits[q, i], want)


def test_training_mode_restored_per_module():
    x, y = _data()
    model = _model().train()
    model[1].eval()  # a submodule in a different mode than the root
    query_logits(model, _batches(x, y, range(N), 8), flip)
    assert model.training and model[0].training and not model[1].training and model[2].training


def test_signals_agree_with_logits():
    x, y = _data()
    model = _model()
    loader = _batches(x, y, range(N), 6)
    logits, labels = query_logits(model, loader, flip)
    sig = query_signals(model, loader, flip, progress=True)
    assert set(sig) == {"probability", "rescaled_logit", "correct", "labels"}
    assert torch.equal(sig["labels"], labels)
    torch.testing.assert_close(sig["probability"], true_class_probability(logits, labels))
    torch.testing.assert_close(sig["rescaled_logit"], rescaled_logit(logits, labels))
    assert torch.equal(sig["correct"], logits.argmax(-1) == labels)
    assert sig["probability"].shape == (2, N) and sig["correct"].dtype == torch.bool


def test_missing_and_out_of_range_indices():
    x, y = _data()
    loader = _batches(x, y, range(N - 2), 5)  # samples N-2, N-1 never shown
    with pytest.raises(ValueError, match="never appeared"):
        query_logits(_model(), loader, "plain", num_samples=N)
    with pytest.raises(ValueError, match="num_samples"):
        query_signals(_model(), loader, "plain", num_samples=5)
    sig = query_signals(_model(), loader, "plain", num_samples=N, allow_missing=True)
    assert sig["seen"].sum() == N - 2 and not sig["seen"][-2:].any()
    assert torch.isnan(sig["probability"][:, -2:]).all() and (sig["labels"][-2:] == -1).all()


def test_snn_gets_time_expanded_input_for_per_timestep_dropout():
    x, y = _data()
    snn = TinySNN(T=3)
    strategy = input_dropout(0.2, 2, per_timestep=True)
    logits, _ = query_logits(snn, _batches(x, y, range(N), 10), strategy)
    assert snn.seen[0] == (3, 10, 1, 4, 4) and logits.shape == (2, N, C)
    snn.seen.clear()
    query_logits(snn, _batches(x, y, range(N), 10), "plain")
    assert snn.seen[0] == (10, 1, 4, 4)
    with pytest.raises(ValueError, match="T must"):
        query_logits(_model(), _batches(x, y, range(N), 10), strategy)  # an ANN has no T


def test_bad_loader_and_model_output():
    x, y = _data()
    with pytest.raises(ValueError, match="loader must yield"):
        query_logits(_model(), [(x, y)], "plain")
    with pytest.raises(ValueError, match="no batches"):
        query_logits(_model(), [], "plain")
    with pytest.raises(ValueError, match=r"logits \[B, C\]"):
        query_logits(nn.Identity(), _batches(x, y, range(N), 5), "plain")
