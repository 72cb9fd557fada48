"""Test-only networks for `model.net`, importable as `user_nets.<Name>` (tests/ is on the
path under pytest): good ones, and one per way of breaking the contract."""

import torch
from torch import nn
from spikingjelly.activation_based import layer, neuron, surrogate


class MLP(nn.Module):
    """A good ANN: [B, C, H, W] -> logits [B, classes]."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 8, 8), hidden: int = 32):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class MeanSNN(nn.Module):
    """A good SNN that reads out over time itself: [T, B, ...] -> logits [B, classes]
    (the mean firing of its output neurons), so no per-step readout."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 8, 8), hidden: int = 32):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(layer.Flatten(), layer.Linear(c * h * w, hidden),
                                 neuron.LIFNode(surrogate_function=surrogate.ATan()), layer.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x).mean(0)


class WrongClasses(MLP):
    """Ignores num_classes: always 7 outputs."""

    def __init__(self, input_shape=(1, 8, 8)):
        super().__init__(7, input_shape)


class BatchFirst(MeanSNN):
    """Returns [B, T, classes]: time and batch swapped."""

    def forward(self, x):
        return self.net(x).transpose(0, 1)


class Flat(MLP):
    """No classes dimension: one number per sample."""

    def forward(self, x):
        return self.net(x).sum(-1)


class SpikesAndMembrane(MLP):
    """Returns a tuple, as snnTorch networks often do."""

    def forward(self, x):
        out = self.net(x)
        return out, out


class Leaky(MLP):
    """Keeps a running total across calls in a plain attribute that no reset reaches."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 8, 8)):
        super().__init__(num_classes, input_shape)
        self.total = None

    def forward(self, x):
        out = self.net(x)
        self.total = out.detach() if self.total is None or self.total.shape != out.shape else self.total + out.detach()
        return out + self.total


class Frozen(MLP):
    """Returns logits that no gradient reaches (a hard threshold without surrogate)."""

    def forward(self, x):
        return (self.net(x) > 0).float()


class NoParameters(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return torch.zeros(x.shape[0], self.num_classes)


class Broken(MLP):
    def __init__(self, num_classes: int = 10, input_shape=(1, 8, 8)):
        super().__init__(num_classes, (3, 32, 32))  # expects another input size


def not_a_module():
    return MLP()


class SnnTorchForgetful(nn.Module):
    """examples.snntorch_net.SnnTorchCNN without its reset: snnTorch neurons called without
    `mem` carry their membrane potential over from the last query (needs snntorch)."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 8, 8)):
        super().__init__()
        from examples.snntorch_net import SnnTorchCNN

        self.inner = SnnTorchCNN(num_classes, input_shape)

    def forward(self, x):
        net, readout = self.inner, []
        for x_t in x:
            spk1, _ = net.lif1(torch.nn.functional.avg_pool2d(net.conv(x_t), 2))
            _, mem2 = net.lif2(net.fc(spk1.flatten(1)))
            readout.append(mem2)
        return torch.stack(readout)


class BatchNormMLP(MLP):
    """A good ANN with a BatchNorm layer, which DP-SGD cannot train (no per-sample gradient)."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 8, 8), hidden: int = 32):
        super().__init__(num_classes, input_shape, hidden)
        c, h, w = input_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
