"""The model's explicit path for event frames: an SNN takes frame t as step t as it is (no
normalisation, repetition or Poisson coding), an ANN takes the frames summed."""

import pytest
import torch
from spikingjelly.activation_based import functional

from core.errors import ConfigError
from lightning_modules import Classifier

SHAPE = (2, 12, 12)
# A normalisation that would change the input visibly, to show the frames path skips it.
NORM = ([0.5, 0.25], [0.1, 0.2])


def _model(kind="snn", T=3, **kwargs):
    torch.manual_seed(0)
    return Classifier(kind=kind, T=T, input_shape=SHAPE, num_classes=5, width=0.25, normalization=NORM,
                      input_frames=3, **kwargs).eval()


def _frames(b=4, f=3):
    return torch.randint(0, 4, (b, f, *SHAPE)).float()


def test_snn_steps_are_the_frames_as_they_are():
    model, x = _model(), _frames()
    with torch.no_grad():
        steps = model.forward_steps(x)
        functional.reset_net(model.net)
        direct = model.net(x.transpose(0, 1))  # frame t is step t: nothing normalised or repeated
    assert steps.shape == (3, 4, 5) and torch.equal(steps, direct)
    with torch.no_grad():
        assert torch.equal(model(x), steps.mean(0))


def test_snn_run_with_fewer_steps_reads_the_first_frames():
    model, x = _model(), _frames()
    with torch.no_grad():
        full = model.forward_steps(x)
        model.T = 2  # a latency audit: T' = 2 of 3 frames
        assert torch.allclose(model.forward_steps(x), full[:2], atol=1e-6)
        model.T = 4
        with pytest.raises(ValueError, match="T=4 steps asked of event data with 3 frames"):
            model.forward_steps(x)


def test_ann_gets_the_frames_summed_so_the_number_of_frames_does_not_matter():
    model, x = _model("ann"), _frames()
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, model.net(x.sum(1)))
        # the same events in one frame: the same input to the ANN
        assert torch.equal(model(x.sum(1, keepdim=True)), out)
    with pytest.raises(ValueError, match=r"expected frames \[B, F, 2, 12, 12\]"):
        model(x[:, 0])


def test_frames_of_another_count_than_trained_are_refused():
    with pytest.raises(ConfigError, match=r"trained on \[B, 3, 2, 12, 12\].*--model.T 3"):
        _model()(_frames(f=4))


@pytest.mark.parametrize("kwargs, match", [
    ({"T": 2}, r"model.T=2 is not allowed: the event data hold 3 frames"),
    ({"encoding": "poisson"}, r"model.encoding='poisson' is not allowed with event data"),
    ({"init": "converted", "init_from": "x.ckpt", "neuron": "if"}, r"model.init='converted' is not allowed with event"),
])
def test_settings_that_do_not_fit_event_data_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _model(**kwargs)


def test_an_ann_on_event_data_may_keep_any_t():
    assert _model("ann", T=7).T is None


def test_training_step_on_frames_backpropagates():
    model = _model().train()
    x, y = _frames(), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("kind, cls", [("ann", "user_nets.MLP"), ("snn", "user_nets.MeanSNN")])
def test_a_network_of_your_own_takes_event_frames_the_same_way(kind, cls):
    """model.net on event data: the contract check feeds it frames, the SNN gets [T, B, 2, H, W]
    counts and the ANN their sum, as the built-in networks do."""
    torch.manual_seed(0)
    model = Classifier(kind=kind, net={"class_path": cls}, T=3, input_shape=SHAPE, num_classes=5,
                       normalization=NORM, input_frames=3).eval()
    x = _frames()
    with torch.no_grad():
        if kind == "ann":
            assert torch.equal(model(x), model.net(x.sum(1)))
        else:
            functional.reset_net(model.net)
            expected = model.net(x.transpose(0, 1))
            assert torch.equal(model(x), expected)
