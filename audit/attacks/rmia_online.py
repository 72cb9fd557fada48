"""Online RMIA: the likelihood ratio against population samples, IN and OUT references."""

from . import Attack, register
from ._rmia import GAMMA, PAPER, PER_QUERY, rmia_scores


@register
class RmiaOnline(Attack):
    name = "rmia_online"
    description = "RMIA with Pr(x) the mean over all references"
    paper = PAPER
    access = "confidence"
    signals = ("probability", "population")
    references = "in_out"
    settings = {"rmia_gamma": GAMMA, "rmia_per_query": PER_QUERY}
    default = True
    order = 40

    def score(self, data):
        return rmia_scores(data, None, self.args["rmia_gamma"], self.args["rmia_per_query"])
