"""An snnTorch network in the `model.net` contract:

    pip install snntorch   # or: pip install -e ".[examples]"
    python run.py fit --config examples/snntorch_net.yaml

snnTorch neurons run one time step per call and keep their membrane potential in module
attributes, which spikingjelly's reset (what the tool calls before every query) does not
reach. The contract asks that the same query twice give the same logits, so the wrapper
starts every forward from rest: `mem = lif.reset_mem()`, then the state is passed along
explicitly, as snnTorch's tutorials do. (`snntorch.utils.reset(net)` is for
`init_hidden=True` networks; it resets every neuron of a class in the process, those of
other models included.) The loop over time is the wrapper's: [T, B, C, H, W] in, the
output neurons' membrane potential at every step out, [T, B, classes].
"""

from __future__ import annotations

import torch

try:
    import snntorch as snn
    from snntorch import surrogate
except ImportError as err:  # the tool itself never needs it: say how to get it
    raise ImportError("this example needs snnTorch: pip install snntorch "
                      "(or pip install -e \".[examples]\")") from err
from torch import nn
from torch.nn import functional as F


class SnnTorchCNN(nn.Module):
    """conv -> avg pool -> Leaky -> linear -> Leaky; the readout is the output layer's membrane
    potential per step (its spikes would give T + 1 distinct logit values at most).

    Args:
        num_classes, input_shape: from the data (the tool passes them).
        channels: convolution channels.
        beta: membrane decay per step.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 8, 8), channels: int = 16,
                 beta: float = 0.9):
        super().__init__()
        c, h, w = input_shape
        self.conv = nn.Conv2d(c, channels, 3, padding=1)
        self.lif1 = snn.Leaky(beta=beta, spike_grad=surrogate.atan())
        self.fc = nn.Linear(channels * (h // 2) * (w // 2), num_classes)
        self.lif2 = snn.Leaky(beta=beta, spike_grad=surrogate.atan(), reset_mechanism="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, B, C, H, W] -> [T, B, classes]
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()  # every query from rest
        readout = []
        for x_t in x:
            spk1, mem1 = self.lif1(F.avg_pool2d(self.conv(x_t), 2), mem1)
            _, mem2 = self.lif2(self.fc(spk1.flatten(1)), mem2)
            readout.append(mem2)
        return torch.stack(readout)
