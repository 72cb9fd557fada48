"""The SNN's speed-ups compute what the plain spikingjelly network computes.

Two shortcuts (see benchmarks/train_step.py for what they buy):
- LeanLIFNode: a multi-step LIF as one autograd Function instead of spikingjelly 2.0's
  CPU autograd graph of unfused ops. Reference: spikingjelly's LIFNode.
- Classifier._stem_once: with direct encoding the first conv + norm (BN or GroupNorm) run once on [B, ...]
  and are expanded over T. Reference: the same model run the original way,
  `net(encode(x))` (image repeated T times, conv + BN on T*B rows) with spikingjelly's
  own neurons.
"""

import copy
import types

import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from lightning_modules import Classifier
from lightning_modules.networks import LeanLIFNode

SURROGATES = {"atan": surrogate.ATan, "sigmoid": surrogate.Sigmoid}


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny; with 2 OpenMP threads on a CPU busy with other jobs each op
    waits on the other thread (a resnet18 step here: 3.4 s on 2 threads, 0.03 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _lif_pair(sg: str, v_reset: float = 0.0, tau: float = 2.0):
    kw = dict(tau=tau, v_reset=v_reset, surrogate_function=SURROGATES[sg](), detach_reset=True, step_mode="m")
    return neuron.LIFNode(**kw), LeanLIFNode(**kw)


def _inputs(T: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, 6, 5, 7, generator=gen) * 1.5 + 0.6
    x[0, 0, 0, :3] = torch.tensor([2.0, 1.9999999, 2.0000002])  # h = x/2 at and around the threshold
    return x


@pytest.mark.parametrize("sg", ["atan", "sigmoid"])
@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("tau, v_reset", [(2.0, 0.0), (2.0, -0.25), (1.5, 0.0)])  # 1.5: tau not a power of two
def test_lean_lif_matches_spikingjelly(sg, T, tau, v_reset):
    """Same spikes and final v bit for bit; gradients to float rounding. Two calls without
    a reset carry v across calls, and the loss also reads the final v, so the gradient
    paths through the initial and the final membrane potential are both checked."""
    results = []
    for node in _lif_pair(sg, v_reset, tau):
        x1, x2 = _inputs(T, 1).requires_grad_(), _inputs(T, 2).requires_grad_()
        functional.reset_net(node)
        s1 = node(x1)
        s2 = node(x2)
        w = torch.linspace(-1, 1, s2[0].numel()).view_as(s2[0])
        loss = (s1 * 0.3).sum() + (s2 * w).sum() + (node.v * w.flip(0)).sum()
        g1, g2 = torch.autograd.grad(loss, (x1, x2))
        results.append((s1, s2, node.v.detach(), g1, g2))
    (ref_s1, ref_s2, ref_v, ref_g1, ref_g2), (s1, s2, v, g1, g2) = results
    assert torch.equal(s1, ref_s1) and torch.equal(s2, ref_s2) and torch.equal(v, ref_v)
    assert ref_s1.sum() > 0 and (ref_s1 == 0).any()  # both spikes and silence were exercised
    torch.testing.assert_close(g1, ref_g1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2, ref_g2, rtol=1e-5, atol=1e-6)


def test_lean_lif_state_is_cleared_by_reset_net():
    _, node = _lif_pair("atan")
    x = _inputs(3)
    with torch.no_grad():
        first = node(x)
        node(x * 3)
        assert isinstance(node.v, torch.Tensor)
        functional.reset_net(node)
        assert node.v == 0.0  # back at rest: the next call starts from v_reset
        assert torch.equal(node(x), first)


def test_default_snn_takes_the_fast_path():
    model = Classifier(kind="snn", surrogate="sigmoid")
    nodes = [m for m in model.modules() if isinstance(m, LeanLIFNode)]
    assert len(nodes) == 4 and all(n._fast_path(torch.zeros(2, 3)) == "sigmoid" for n in nodes)


def test_lean_lif_falls_back_to_spikingjelly_where_not_covered():
    for kw in (dict(v_reset=None), dict(detach_reset=False), dict(decay_input=False),
               dict(surrogate_function=surrogate.PiecewiseQuadratic())):
        args = dict(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m") | kw
        x = _inputs(3).requires_grad_()
        ref, lean = neuron.LIFNode(**args), LeanLIFNode(**args)
        assert lean._fast_path(x) is None
        torch.testing.assert_close(lean(x), ref(x))


def _reference(model: Classifier) -> Classifier:
    """A copy that runs the way the model did before the speed-ups: spikingjelly's own
    LIF and the stem on the T-fold repeated image."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, LeanLIFNode):
            m.multi_step_forward = types.MethodType(neuron.LIFNode.multi_step_forward, m)

    def forward_steps(self, x):
        functional.reset_net(self.net)
        return self.net(self.encode(x))

    ref.forward_steps = types.MethodType(forward_steps, ref)
    return ref


def _train_step_state(model: Classifier, x, y):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return logits.detach(), grads, {k: b.clone() for k, b in model.named_buffers()}


@pytest.mark.parametrize("arch, T, neuron_type, norm", [("cnn", 1, "lif", "batch"), ("cnn", 4, "lif", "batch"),
                                                        ("resnet18", 3, "lif", "batch"), ("vgg16", 2, "lif", "batch"),
                                                        ("cnn", 3, "if", "batch"), ("cnn", 4, "lif", "group"),
                                                        ("resnet18", 3, "lif", "group")])
def test_snn_matches_reference_in_training_and_eval(arch, T, neuron_type, norm):
    torch.manual_seed(0)
    model = Classifier(kind="snn", arch=arch, T=T, neuron=neuron_type, width=0.125 if arch != "cnn" else 0.5,
                       input_shape=(3, 8, 8), num_classes=7, normalization=([0.4] * 3, [0.3] * 3), norm=norm)
    ref = _reference(model)
    x, y = torch.rand(12, 3, 8, 8), torch.randint(0, 7, (12,))
    for step in range(2):  # the second step starts from updated BN running statistics
        logits, grads, buffers = _train_step_state(model, x + step * 0.1, y)
        ref_logits, ref_grads, ref_buffers = _train_step_state(ref, x + step * 0.1, y)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-3, atol=1e-5, msg=k)
        for k in ref_buffers:  # running mean/var of the stem BN included
            torch.testing.assert_close(buffers[k], ref_buffers[k], rtol=1e-5, atol=1e-7, msg=k)
    model.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
        model.T = ref.T = T + 1  # a latency sweep changes T after training
        torch.testing.assert_close(model.forward_steps(x), ref.forward_steps(x), rtol=1e-4, atol=1e-5)
        assert model.forward_steps(x).shape == (T + 1, 12, 7)


def test_stem_shortcut_only_for_direct_encoding_of_one_image():
    torch.manual_seed(0)
    model = Classifier(kind="snn", T=3).eval()
    x = torch.rand(5, 1, 8, 8)
    per_step = x.unsqueeze(0).repeat(3, 1, 1, 1, 1)
    per_step[1] = 0  # a per-time-step query mask: the steps differ, the full path runs
    with torch.no_grad():
        masked = model(per_step)
        torch.testing.assert_close(masked, _reference(model)(per_step), rtol=0, atol=0)
    poisson = Classifier(kind="snn", T=3, encoding="poisson").eval()
    with torch.no_grad():
        torch.testing.assert_close(poisson(x), _reference(poisson)(x), rtol=0, atol=0)


def test_state_dict_keys_unchanged():
    """Checkpoints of the same hyper-parameters stay loadable: LeanLIFNode has no
    parameters or buffers, so the keys are those of the spikingjelly network."""
    model = Classifier(kind="snn", arch="resnet18", width=0.125)
    ref = _reference(model)
    assert list(model.state_dict()) == list(ref.state_dict())
    assert sum(isinstance(m, LeanLIFNode) for m in model.modules()) > 0
    Classifier(kind="snn", arch="resnet18", width=0.125).load_state_dict(ref.state_dict())


def test_train_step_benchmark_runs(capsys):
    import runpy
    from pathlib import Path

    bench = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "train_step.py"))
    bench["main"](["--shape", "1", "8", "8", "--batch", "8", "--rounds", "1", "--width", "0.25"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("1x8x8")]
    models = [" ".join(row[1:3]) if row[1] == "snn" else row[1] for row in rows]
    assert models == ["ann", "snn T=1", "snn T=2", "snn T=4"]
    assert out.splitlines()[-1].startswith("verdict: goal")
