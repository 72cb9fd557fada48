"""LiRA with the time steps as queries: the per-step readout's true-class rescaled logit is
scored by online LiRA at every step (as LiRA scores augmentations) and the T log likelihood
ratios are averaged. It sees the readout at every step (`steps`)."""

from . import Attack, register
from ._access import LIRA_PAPER
from ._lira import FIX_VARIANCE


@register
class StepsLira(Attack):
    name = "steps_lira"
    description = "online LiRA on the rescaled logit at each time step, averaged over the steps"
    paper = LIRA_PAPER
    access = "steps"
    signals = ("steps",)
    references = "in_out"
    settings = {"lira_fix_variance": FIX_VARIANCE}
    order = 210

    def score(self, data):
        from attacks.access import steps_lira

        fix = self.args["lira_fix_variance"]
        if fix is None:  # as LiRA: one global sigma below 64 IN/OUT references per sample
            fix = len(data.references) < 128
        return steps_lira(data.steps_target, data.steps_references, data.ref_in, fix_variance=fix)
