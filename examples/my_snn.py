"""A spiking network of your own, written with spikingjelly alone and audited by the tool:

    python run.py fit --config examples/my_snn.yaml

Nothing here knows about the tool. The tool builds the class from the config's
class_path and init_args, fills in num_classes and input_shape from the data, puts the
spikingjelly layers in multi-step mode, resets the neurons before every query, and
encodes the image over T steps (model.encoding). forward therefore gets
[T, B, C, H, W] and returns a readout per step, [T, B, classes]: the logits are the
mean over the steps, and `run.py audit --latencies` reads the first t steps.
"""

from __future__ import annotations

from torch import nn
from spikingjelly.activation_based import layer, neuron, surrogate


class MySNN(nn.Module):
    """Two conv-BN-LIF blocks with average pooling, then a linear readout of the spikes.

    Args:
        num_classes, input_shape: from the data (the tool passes them).
        channels: channels of the first block; the second has twice as many.
        tau: LIF membrane time constant.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 8, 8), channels: int = 16,
                 tau: float = 2.0):
        super().__init__()
        c, h, w = input_shape

        def lif():
            return neuron.LIFNode(tau=tau, surrogate_function=surrogate.ATan(), detach_reset=True)

        self.features = nn.Sequential(
            layer.Conv2d(c, channels, 3, padding=1, bias=False), layer.BatchNorm2d(channels), lif(), layer.AvgPool2d(2),
            layer.Conv2d(channels, 2 * channels, 3, padding=1, bias=False), layer.BatchNorm2d(2 * channels), lif(),
            layer.AvgPool2d(2), layer.Flatten(),
        )
        self.readout = layer.Linear(2 * channels * (h // 4) * (w // 4), num_classes)

    def forward(self, x):  # [T, B, C, H, W] -> [T, B, classes]
        return self.readout(self.features(x))
