"""Architectures defined once and built as an ANN (ReLU) or an SNN (spiking neurons).

Every layer comes from spikingjelly's `layer` module: in single-step mode these are
plain torch layers, so the ANN is an ordinary network; the SNN is the same graph
with spiking neurons in place of ReLU, switched to multi-step mode ([T, B, ...]).
LIF neurons are spikingjelly's LIFNode with a leaner CPU path (LeanLIFNode), IF
neurons spikingjelly's IFNode.
Pooling is average pooling throughout (ANN-to-SNN conversion maps it exactly;
max pooling over spikes does not).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from typing import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from spikingjelly.activation_based import functional, layer, neuron, surrogate

ARCHS = ("cnn", "vgg16", "resnet18", "resnet34")
NEURONS = ("lif", "if")
SURROGATES = ("atan", "sigmoid")
NORMS = ("batch", "group")


def activation_factory(kind: str, neuron_type: str = "lif", surrogate_name: str = "atan",
                       tau: float = 2.0, v_threshold: float = 1.0, v_init: float = 0.5) -> Callable[[], nn.Module]:
    if kind == "ann":
        return nn.ReLU
    sg = {"atan": surrogate.ATan, "sigmoid": surrogate.Sigmoid}[surrogate_name]
    if neuron_type == "lif":
        return lambda: LeanLIFNode(tau=tau, v_threshold=v_threshold, surrogate_function=sg(), detach_reset=True)
    if neuron_type == "scaled_if":  # init=converted (lightning_modules/conversion.py), not a user choice
        return lambda: ScaledIFNode(surrogate_function=sg(), v_init=v_init)
    return lambda: neuron.IFNode(v_threshold=v_threshold, surrogate_function=sg(), detach_reset=True)


class ScaledIFNode(neuron.IFNode):
    """IF neuron with a per-layer threshold `threshold` (a buffer, so it is in the
    state_dict) that emits spikes of amplitude `threshold`, with soft reset.

    Its firing rate times the threshold tracks ReLU(x) clipped at the threshold, so a
    ReLU ANN becomes an SNN by copying its weights and setting each layer's threshold
    to that layer's activation maximum (or a percentile): rate coding, as spikingjelly's
    ann2snn builds it with a VoltageScaler(1/theta) -> IFNode(1, soft reset) ->
    VoltageScaler(theta) triple; here the triple is one module that our networks can
    hold in place of ReLU, so the converted SNN keeps the architecture's structure
    and reloads from hparams alone. The surrogate gradient passes through unchanged
    (d(theta*s)/dx = surrogate'(x/theta - 1)), so the SNN can be fine-tuned.

    `v_init` is the membrane potential after every reset, as a fraction of the
    threshold. 0 is spikingjelly's ann2snn (an IF neuron starts at rest); 0.5, the
    default, starts half-way to the threshold, which turns the rate code into rounding
    instead of flooring and minimises the expected conversion error at low T (Bu et
    al., ICLR 2022; spikingjelly 2.0 ships the same idea as neuron.HalfThresholdIFNode).
    At T = 1 it is the difference between a dead network and a working one: with
    v_init = 0 a neuron fires only where the input reaches the layer's activation
    maximum.
    """

    def __init__(self, surrogate_function, v_init: float = 0.5):
        super().__init__(v_threshold=1.0, v_reset=None, surrogate_function=surrogate_function, detach_reset=True)
        self.register_buffer("threshold", torch.ones(()))
        self.v_init = float(v_init)
        self.set_reset_value("v", self.v_init)
        self.v = self.v_init

    def forward(self, *args, **kwargs):
        x = args[0]
        return super().forward(x / self.threshold, *args[1:], **kwargs) * self.threshold


@functools.lru_cache(maxsize=64)
def _scalar(value: float) -> torch.Tensor:
    """A cached, read-only 0-dim float32 tensor, so that torch.add / addcmul apply an
    offset in the same op (a fresh torch.tensor per backward showed up at 8x8 inputs)."""
    return torch.tensor(value, dtype=torch.float32)


class _MultiStepLIF(torch.autograd.Function):
    """Hard-reset LIF over [T, ...] (decay_input, detached reset), forward and backward.

    Same recurrence and rounding as spikingjelly's LIFNode:
        h[t] = v[t-1] + (x[t] - (v[t-1] - v_reset)) / tau,  s[t] = (h[t] >= v_threshold),
        v[t] = v_reset where s[t] else h[t];  ds/dh = surrogate'(h - v_threshold).
    spikingjelly 2.0 runs this on the CPU as autograd over about a dozen unfused ops per
    step (their inputs saved for backward, plus stacks); here it is 4 ops per step forward
    (3 at the first step, from rest; 5 if tau is not a power of two) and, backward, 3 ops
    over [T, ...] for the surrogate plus 2 per step for the recurrence, with only h and
    the spikes saved.
    """

    @staticmethod
    def forward(ctx, x_seq, v, tau, v_threshold, v_reset, surrogate_id, alpha, v_seq=None):
        # v is None at rest (v_reset everywhere, as after functional.reset_net). `v_seq`, when
        # given ([T, ...]), receives v after every step (store_v_seq: what spikingjelly's v_seq holds).
        spikes = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
        h_seq = torch.empty_like(spikes)
        # For tau a power of two (the default 2), y * (1/tau) is y / tau bit for bit, and
        # v + (x - v) / tau takes one fused add instead of a divide and an add.
        inv_tau = 1 / tau if math.frexp(tau)[0] == 0.5 else None
        for t in range(x_seq.shape[0]):
            h, s = h_seq[t], spikes[t]
            if v is None:  # v_reset + (x - 0) / tau
                if inv_tau is None:
                    torch.div(x_seq[t], tau, out=h)
                else:
                    torch.mul(x_seq[t], inv_tau, out=h)
                if v_reset != 0:
                    h.add_(v_reset)
            else:
                torch.sub(x_seq[t], v - v_reset if v_reset != 0 else v, out=h)
                if inv_tau is None:
                    h.div_(tau).add_(v)
                else:
                    torch.add(v, h, alpha=inv_tau, out=h)
            torch.ge(h, v_threshold, out=s)
            v = torch.addcmul(h, h, s, value=-1)  # h - h*s: h, or exactly 0 where it spiked
            if v_reset != 0:
                v.add_(s, alpha=v_reset)
            if v_seq is not None:
                v_seq[t] = v
        ctx.save_for_backward(h_seq, spikes)
        ctx.constants = (tau, v_threshold, surrogate_id, alpha)
        ctx.set_materialize_grads(False)
        return spikes, v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spikes, grad_v):
        h_seq, spikes = ctx.saved_tensors
        tau, v_threshold, surrogate_id, alpha = ctx.constants
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(h_seq)
        # g = grad_spikes * surrogate'(h - v_threshold) / tau, the /tau of dh/dx folded in.
        if surrogate_id == "atan":  # alpha/2 / (1 + (pi/2 alpha u)^2), written g_s / (c + w^2)
            c = 2 * tau / alpha
            k = math.sqrt(c) * math.pi / 2 * alpha
            w = torch.add(_scalar(-k * v_threshold), h_seq, alpha=k)
            torch.addcmul(_scalar(c), w, w, out=w)
            g = torch.div(grad_spikes, w, out=w)
        else:  # sigmoid: alpha * sig(alpha u) * (1 - sig(alpha u))
            sig = torch.add(_scalar(-alpha * v_threshold), h_seq, alpha=alpha).sigmoid_()
            g = torch.ops.aten.sigmoid_backward(grad_spikes, sig).mul_(alpha / tau)
        # Recurrence: dL/dh[t] = g'[t] + (1 - 1/tau) (1 - s[t]) dL/dh[t+1]; in units of 1/tau
        # g[t] is then dL/dx[t] directly.
        decay = 1 - 1 / tau
        T = h_seq.shape[0]
        carry = torch.empty_like(h_seq[0]) if T > 1 else None
        if grad_v is not None:  # the final v is h[T-1] (1 - s[T-1]) (reset detached)
            g[T - 1].add_(torch.addcmul(grad_v, grad_v, spikes[T - 1], value=-1), alpha=1 / tau)
        for t in range(T - 2, -1, -1):
            torch.addcmul(g[t + 1], g[t + 1], spikes[t], value=-1, out=carry)
            g[t].add_(carry, alpha=decay)
        grad_v0 = g[0] * (tau - 1) if ctx.needs_input_grad[1] else None  # dh[0]/dv0 = 1 - 1/tau
        return g, grad_v0, None, None, None, None, None, None


class LeanLIFNode(neuron.LIFNode):
    """spikingjelly's LIFNode with a leaner multi-step path on the CPU (`_MultiStepLIF`).

    Same state (`v`, cleared by functional.reset_net), same spikes and final v bit for
    bit, same gradients up to float rounding (tests/test_snn_speed_equivalence.py).
    Forward + backward on [T, 128, 32, 32, 32], idle 2-core CPU: T=1 23.7 -> 7.5 ms,
    T=4 103 -> 37 ms (a ReLU on the same tensor: 3.6 and 14.6 ms). Whatever the fast
    path does not cover goes to spikingjelly: CUDA (where it has fused kernels), soft
    reset, decay_input=False, reset not detached, other surrogates, non-fp32. With store_v_seq
    the fast path fills `v_seq` ([T, ...], v after each step's reset) as spikingjelly does.
    """

    def _fast_path(self, x_seq: torch.Tensor):
        sg = self.surrogate_function
        kind = {surrogate.ATan: "atan", surrogate.Sigmoid: "sigmoid"}.get(type(sg))
        if (kind is None or not sg.spiking or not isinstance(sg.alpha, (int, float)) or x_seq.device.type != "cpu"
                or x_seq.dtype != torch.float32 or self.v_reset is None or not self.decay_input
                or not self.detach_reset or self._neuron_precision is not None):
            return None
        return kind

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        surrogate_id = self._fast_path(x_seq)
        if surrogate_id is None or args or kwargs:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        v = self._memories["v"]
        # As spikingjelly's materialize_states: a float or a mis-shaped tensor means rest.
        if isinstance(v, torch.Tensor) and v.shape == x_seq.shape[1:]:
            v = v.to(x_seq)
        elif isinstance(v, float) and v != self.v_reset:
            v = torch.full_like(x_seq[0], v)
        else:
            v = None
        v_seq = torch.empty_like(x_seq) if self.store_v_seq else None
        spikes, v = _MultiStepLIF.apply(x_seq, v, float(self.tau), float(self.v_threshold), float(self.v_reset),
                                        surrogate_id, float(self.surrogate_function.alpha), v_seq)
        self._memories["v"] = v
        self.v_seq = v_seq
        return spikes


class Normalize(nn.Module):
    """(x - mean) / std over the channel axis, for [B, C, H, W] and [T, B, C, H, W] alike."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


GROUP_NORM_GROUPS = 32
GROUP_NORM_MIN_CHANNELS = 4


def group_norm(channels: int) -> layer.GroupNorm:
    """GroupNorm with gcd(channels, 32) groups (32, GroupNorm's usual count, when it divides the
    channels), halved until each group has at least 4 channels. Its statistics are those of one
    sample (and, in an SNN, of one time step), so a per-sample gradient exists, as DP-SGD needs;
    BatchNorm's are the batch's. The floor of 4 channels: with one channel per group, a 1x1
    feature map (resnet18's last stage on 8x8 digits) normalises to exactly 0 and the layer
    passes nothing on. Without DP on digits (benchmarks/norm_accuracy.py: CNN, 30 epochs, 3
    seeds) GroupNorm against BatchNorm gave non-member accuracy 0.982 against 0.989 for the ANN
    and 0.984 against 0.985 for the SNN at T = 4; 8 groups instead of 32 changed neither by
    more than 0.001."""
    groups = math.gcd(channels, GROUP_NORM_GROUPS)
    while groups > 1 and channels // groups < GROUP_NORM_MIN_CHANNELS:
        groups //= 2
    return layer.GroupNorm(groups, channels)


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The normalisation after every conv: batch (BatchNorm2d) or group (group_norm)."""
    return {"batch": layer.BatchNorm2d, "group": group_norm}[norm]


def _conv_bn(cin: int, cout: int, act, stride: int = 1, norm=layer.BatchNorm2d) -> list[nn.Module]:
    return [layer.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), norm(cout), act()]


def cnn(in_shape, num_classes: int, act, width: float = 1.0, norm=layer.BatchNorm2d) -> nn.Sequential:
    """Small CNN: 3 conv (32-32-64 at width 1) + 2 average pools + 2 linear layers."""
    c, h, w = in_shape
    c1, c2 = max(4, round(32 * width)), max(4, round(64 * width))
    return nn.Sequential(
        *_conv_bn(c, c1, act, norm=norm), *_conv_bn(c1, c1, act, norm=norm), layer.AvgPool2d(2),
        *_conv_bn(c1, c2, act, norm=norm), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(c2 * (h // 4) * (w // 4), 2 * c2), act(), layer.Linear(2 * c2, num_classes),
    )


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(in_shape, num_classes: int, act, width: float = 1.0, norm=layer.BatchNorm2d) -> nn.Sequential:
    """VGG-16 with batch norm: 13 conv + 3 linear layers. A pool is skipped once the
    feature map is 1x1 (small inputs such as 8x8 digits)."""
    c, size = in_shape[0], in_shape[-1]
    layers: list[nn.Module] = []
    for v in VGG16_CFG:
        if v == "M":
            if size >= 2:
                layers.append(layer.AvgPool2d(2))
                size //= 2
        else:
            v = max(4, round(v * width))
            layers += _conv_bn(c, v, act, norm=norm)
            c = v
    hidden = max(4, round(512 * width))
    return nn.Sequential(
        *layers, layer.AdaptiveAvgPool2d(1), layer.Flatten(),
        layer.Linear(c, hidden), act(), layer.Linear(hidden, hidden), act(), layer.Linear(hidden, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act, norm=layer.BatchNorm2d):
        super().__init__()
        self.conv1 = layer.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.act1 = act()
        self.conv2 = layer.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(layer.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout))
        self.act2 = act()

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


def _resnet(blocks, in_shape, num_classes: int, act, width: float = 1.0, norm=layer.BatchNorm2d) -> nn.Sequential:
    """CIFAR-style ResNet of basic blocks: 3x3 stem, no stem pooling, `blocks` per stage at
    64-128-256-512 channels (width 1), the first block of stages 2-4 with stride 2."""
    widths = [max(4, round(v * width)) for v in (64, 128, 256, 512)]
    layers: list[nn.Module] = _conv_bn(in_shape[0], widths[0], act, norm=norm)
    cin = widths[0]
    for i, (cout, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, act, norm))
            cin = cout
    return nn.Sequential(*layers, layer.AdaptiveAvgPool2d(1), layer.Flatten(), layer.Linear(cin, num_classes))


def resnet18(in_shape, num_classes: int, act, width: float = 1.0, norm=layer.BatchNorm2d) -> nn.Sequential:
    """CIFAR-style ResNet-18: [2, 2, 2, 2] basic blocks."""
    return _resnet((2, 2, 2, 2), in_shape, num_classes, act, width, norm)


def resnet34(in_shape, num_classes: int, act, width: float = 1.0, norm=layer.BatchNorm2d) -> nn.Sequential:
    """CIFAR-style ResNet-34: [3, 4, 6, 3] basic blocks (He et al., 2016, Table 1), the same
    stem and stages as resnet18."""
    return _resnet((3, 4, 6, 3), in_shape, num_classes, act, width, norm)


@functools.cache
def keep_large_tensors_in_heap() -> bool:
    """Let glibc reuse freed memory for large tensors instead of mapping fresh pages.

    glibc serves allocations above 32 MiB with mmap and unmaps them on free, so such a
    tensor is page-faulted in anew at every training step. An SNN's [T*B, ...] activations
    cross that line (T=4, B=128, 32 channels of 32x32: 64 MiB): a pass that allocates its
    64 MiB output took 27 ms here against 9 ms into a reused buffer, and the T=4 step at
    3x32x32 was 15-20% slower. Called by run.py and the benchmarks at start-up (not on
    import: a library should not change a process's allocator unasked), so ANNs and SNNs
    alike run with it; the cost
    is that freed memory is kept by the process (up to 2 GiB) instead of going back to the
    OS. Skipped off glibc and when MALLOC_MMAP_THRESHOLD_ is set by hand.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 31))


def build_network(arch: str, kind: str, in_shape, num_classes: int, width: float = 1.0, norm: str = "batch",
                  **neuron_kwargs) -> nn.Module:
    act = activation_factory(kind, **neuron_kwargs)
    builders = {"cnn": cnn, "vgg16": vgg16, "resnet18": resnet18, "resnet34": resnet34}
    net = builders[arch](tuple(in_shape), num_classes, act, width, norm_layer(norm))
    if kind == "snn":
        functional.set_step_mode(net, "m")
    return net
