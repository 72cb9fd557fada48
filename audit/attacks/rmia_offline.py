"""Offline RMIA: the likelihood ratio against population samples, OUT references only."""

from core.errors import check_number

from . import Attack, Setting, register
from ._rmia import GAMMA, PAPER, PER_QUERY, rmia_scores


@register
class RmiaOffline(Attack):
    name = "rmia_offline"
    description = "RMIA with Pr(x) from OUT references, linearly scaled by a"
    paper = PAPER
    access = "confidence"
    signals = ("probability", "population")
    references = "out"
    settings = {"rmia_offline_a": Setting(0.3, float, "a of offline RMIA, in [0, 1].",
                                          lambda k, v: check_number(k, v, 0.0, 1.0)),
                "rmia_gamma": GAMMA, "rmia_per_query": PER_QUERY}
    default = study = finding = headline = True
    order = 30

    def score(self, data):
        return rmia_scores(data, self.args["rmia_offline_a"], self.args["rmia_gamma"], self.args["rmia_per_query"])
