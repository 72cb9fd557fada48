"""The spikes attack by likelihood ratio: log(1 + spikes) of each spiking layer (for an ANN,
active units of each activation layer) as a feature vector, per-sample IN and OUT Gaussians
from the references with one pooled covariance. It sees the activity (what power or timing
reveals on neuromorphic hardware), not the output."""

from . import Attack, register
from ._access import GAUSSIAN_PAPER, gaussian, too_few


@register
class SpikesGaussian(Attack):
    name = "spikes_gaussian"
    description = "Gaussian likelihood ratio over log(1 + spikes) per spiking layer, one shared covariance"
    paper = GAUSSIAN_PAPER
    access = "spikes"
    signals = ("spikes",)
    references = "in_out"
    order = 240

    def score(self, data):
        return gaussian(data, "spikes")

    def unavailable(self, data):
        return super().unavailable(data) or too_few(data, 3, "to estimate a covariance")
