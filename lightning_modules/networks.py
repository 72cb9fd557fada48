"""Architectures defined once and built as an ANN (ReLU) or an SNN (spiking neurons).

Every layer comes from spikingjelly's `layer` module: in single-step mode these are
plain torch layers, so the ANN is an ordinary network; the SNN is the same graph
with spiking neurons in place of ReLU, switched to multi-step mode ([T, B, ...]).
Pooling is average pooling throughout (ANN-to-SNN conversion maps it exactly;
max pooling over spikes does not).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from spikingjelly.activation_based import functional, layer, neuron, surrogate

ARCHS = ("cnn", "vgg16", "resnet18")
NEURONS = ("lif", "if")
SURROGATES = ("atan", "sigmoid")


def activation_factory(kind: str, neuron_type: str = "lif", surrogate_name: str = "atan",
                       tau: float = 2.0, v_threshold: float = 1.0) -> Callable[[], nn.Module]:
    if kind == "ann":
        return nn.ReLU
    sg = {"atan": surrogate.ATan, "sigmoid": surrogate.Sigmoid}[surrogate_name]
    if neuron_type == "lif":
        return lambda: neuron.LIFNode(tau=tau, v_threshold=v_threshold, surrogate_function=sg(), detach_reset=True)
    return lambda: neuron.IFNode(v_threshold=v_threshold, surrogate_function=sg(), detach_reset=True)


class Normalize(nn.Module):
    """(x - mean) / std over the channel axis, for [B, C, H, W] and [T, B, C, H, W] alike."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _conv_bn(cin: int, cout: int, act, stride: int = 1) -> list[nn.Module]:
    return [layer.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), layer.BatchNorm2d(cout), act()]


def cnn(in_shape, num_classes: int, act, width: float = 1.0) -> nn.Sequential:
    """Small CNN: 3 conv (32-32-64 at width 1) + 2 average pools + 2 linear layers."""
    c, h, w = in_shape
    c1, c2 = max(4, round(32 * width)), max(4, round(64 * width))
    return nn.Sequential(
        *_conv_bn(c, c1, act), *_conv_bn(c1, c1, act), layer.AvgPool2d(2),
        *_conv_bn(c1, c2, act), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(c2 * (h // 4) * (w // 4), 2 * c2), act(), layer.Linear(2 * c2, num_classes),
    )


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(in_shape, num_classes: int, act, width: float = 1.0) -> nn.Sequential:
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
            layers += _conv_bn(c, v, act)
            c = v
    hidden = max(4, round(512 * width))
    return nn.Sequential(
        *layers, layer.AdaptiveAvgPool2d(1), layer.Flatten(),
        layer.Linear(c, hidden), act(), layer.Linear(hidden, hidden), act(), layer.Linear(hidden, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act):
        super().__init__()
        self.conv1 = layer.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = layer.BatchNorm2d(cout)
        self.act1 = act()
        self.conv2 = layer.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = layer.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(layer.Conv2d(cin, cout, 1, stride=stride, bias=False), layer.BatchNorm2d(cout))
        self.act2 = act()

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


def resnet18(in_shape, num_classes: int, act, width: float = 1.0) -> nn.Sequential:
    """CIFAR-style ResNet-18: 3x3 stem, no stem pooling, [2, 2, 2, 2] basic blocks."""
    widths = [max(4, round(v * width)) for v in (64, 128, 256, 512)]
    layers: list[nn.Module] = _conv_bn(in_shape[0], widths[0], act)
    cin = widths[0]
    for i, cout in enumerate(widths):
        for j in range(2):
            layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, act))
            cin = cout
    return nn.Sequential(*layers, layer.AdaptiveAvgPool2d(1), layer.Flatten(), layer.Linear(cin, num_classes))


def build_network(arch: str, kind: str, in_shape, num_classes: int, width: float = 1.0, **neuron_kwargs) -> nn.Module:
    act = activation_factory(kind, **neuron_kwargs)
    net = {"cnn": cnn, "vgg16": vgg16, "resnet18": resnet18}[arch](tuple(in_shape), num_classes, act, width)
    if kind == "snn":
        functional.set_step_mode(net, "m")
    return net
