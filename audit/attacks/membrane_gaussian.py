"""The white-box attack by likelihood ratio: the membrane summary (the readout's true-class
potential, and the last spiking layer's mean, standard deviation and per-neuron max of its
potential) as a feature vector, per-sample IN and OUT Gaussians with one pooled covariance.
The summary is permutation-invariant over neurons, so it transfers across models."""

from . import Attack, register
from ._access import GAUSSIAN_PAPER, gaussian, too_few


@register
class MembraneGaussian(Attack):
    name = "membrane_gaussian"
    description = ("Gaussian likelihood ratio over the membrane summary (readout z_y; last layer's mean, std, max), "
                   "shared covariance")
    paper = GAUSSIAN_PAPER
    access = "membrane"
    signals = ("membrane",)
    references = "in_out"
    order = 260

    def score(self, data):
        return gaussian(data, "membrane")

    def unavailable(self, data):
        return super().unavailable(data) or too_few(data, 3, "to estimate a covariance")
