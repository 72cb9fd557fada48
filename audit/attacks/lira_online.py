"""Online LiRA: Gaussian likelihood ratio of IN against OUT references' rescaled logits."""

from . import Attack, register
from ._lira import FIX_VARIANCE, PAPER, lira_scores


@register
class LiraOnline(Attack):
    name = "lira_online"
    description = "log N(phi; IN refs) - log N(phi; OUT refs) on rescaled logits"
    paper = PAPER
    access = "confidence"
    signals = ("rescaled_logit",)
    references = "in_out"
    settings = {"lira_fix_variance": FIX_VARIANCE}
    default = study = finding = True
    order = 50

    def score(self, data):
        return lira_scores(data, True, self.args["lira_fix_variance"])
