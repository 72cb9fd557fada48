"""The multivariate steps attack: the [T] per-step rescaled logits as one feature vector,
per-sample IN and OUT Gaussians with one covariance pooled over samples (T x T), so that
the steps' correlation is modelled instead of counted T times."""

from . import Attack, register
from ._access import GAUSSIAN_PAPER, gaussian, too_few


@register
class StepsGaussian(Attack):
    name = "steps_gaussian"
    description = "Gaussian likelihood ratio over the [T] per-step rescaled logits, one shared covariance"
    paper = GAUSSIAN_PAPER
    access = "steps"
    signals = ("steps",)
    references = "in_out"
    order = 230

    def score(self, data):
        return gaussian(data, "steps")

    def unavailable(self, data):
        return super().unavailable(data) or too_few(data, 3, "to estimate a covariance")
