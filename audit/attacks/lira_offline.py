"""Offline LiRA: a one-sided test against OUT references' rescaled logits."""

from . import Attack, register
from ._lira import FIX_VARIANCE, PAPER, lira_scores


@register
class LiraOffline(Attack):
    name = "lira_offline"
    description = "log Phi((phi - mu_out) / sigma_out) on rescaled logits"
    paper = PAPER
    access = "confidence"
    signals = ("rescaled_logit",)
    references = "out"
    settings = {"lira_fix_variance": FIX_VARIANCE}
    default = True
    order = 60

    def score(self, data):
        return lira_scores(data, False, self.args["lira_fix_variance"])
