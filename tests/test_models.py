"""ANN and SNN built from one architecture definition: shapes, gradients, state, reload."""

import lightning as L
import pytest
import torch

from core.errors import ConfigError
from lightning_modules import ARCHS, Classifier


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["ann", "snn"])
def test_forward_backward_every_architecture(arch, kind):
    torch.manual_seed(0)
    model = Classifier(kind=kind, arch=arch, T=2, width=0.125, input_shape=(3, 16, 16), num_classes=7)
    x = torch.rand(4, 3, 16, 16)
    logits = model(x)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # surrogate gradients flow through the spikes


def test_snn_is_spiking_and_ann_is_not():
    from spikingjelly.activation_based import neuron

    snn = Classifier(kind="snn", neuron="if", surrogate="sigmoid")
    ann = Classifier(kind="ann")
    assert any(isinstance(m, neuron.IFNode) for m in snn.modules())
    assert not any(isinstance(m, neuron.BaseNode) for m in ann.modules())
    assert snn.T == 4 and ann.T is None


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_snn_same_input_twice_gives_same_output(encoding):
    torch.manual_seed(0)
    model = Classifier(kind="snn", T=3, encoding=encoding).eval()
    x, other = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        first = model(x)
        model(other)  # would leave membrane potential behind without the reset
        assert torch.equal(model(x), first)


def test_snn_accepts_time_expanded_input_and_steps_average_to_logits():
    torch.manual_seed(0)
    model = Classifier(kind="snn", T=3).eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        steps = model.forward_steps(x)
        assert steps.shape == (3, 5, 10)
        assert torch.allclose(steps.mean(0), model(x))
        # a [T, B, ...] input equal to the repeated image is the same query
        assert torch.allclose(model(x.unsqueeze(0).repeat(3, 1, 1, 1, 1)), model(x))
        model.T = 1  # run the trained network with another latency
        assert model(x).shape == (5, 10)


def test_checkpoint_reloads_without_arguments(tmp_path):
    L.seed_everything(0)
    model = Classifier(kind="snn", T=2, width=0.5, input_shape=(1, 8, 8), num_classes=10, lr=0.01)
    data = torch.utils.data.TensorDataset(torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,)), torch.arange(32))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=16))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    again = Classifier.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu").eval()
    model.eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert again.hparams.kind == "snn" and again.T == 2


@pytest.mark.parametrize(
    "kwargs, key",
    [({"kind": "cnn"}, "model.kind"), ({"arch": "lenet"}, "model.arch"), ({"T": 0}, "model.T"),
     ({"neuron": "izh"}, "model.neuron"), ({"surrogate": "relu"}, "model.surrogate"), ({"lr": 0}, "model.lr")],
)
def test_bad_model_values(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Classifier(**kwargs)


def test_resnet34_has_the_resnet34_stages_and_resnet18_the_resnet18_ones():
    from lightning_modules.networks import BasicBlock

    def stages(arch):
        model = Classifier(kind="ann", arch=arch, width=0.125, input_shape=(3, 16, 16))
        blocks = [m for m in model.net if isinstance(m, BasicBlock)]
        # a stage starts where the channel count changes
        starts = [i for i, b in enumerate(blocks) if i == 0 or b.conv1.in_channels != b.conv1.out_channels]
        return [b - a for a, b in zip(starts, [*starts[1:], len(blocks)])]

    assert stages("resnet18") == [2, 2, 2, 2]
    assert stages("resnet34") == [3, 4, 6, 3]  # He et al. (2016), Table 1
