"""LiRA with the time steps as queries: the per-step readout's true-class rescaled logit is
scored by online LiRA at every step (as LiRA scores augmentations) and the T log likelihood
ratios are averaged. It sees the readout at every step (`steps`)."""

from . import Attack, register
from ._access import LIRA_PAPER


@register
class StepsLira(Attack):
    name = "steps_lira"
    description = "online LiRA on the rescaled logit at each time step, averaged over the steps"
    paper = LIRA_PAPER
    access = "steps"
    signals = ("steps",)
    references = "in_out"
    order = 210

    def score(self, data):
        from attacks.access import steps_lira

        return steps_lira(data.steps_target, data.steps_references, data.ref_in)
