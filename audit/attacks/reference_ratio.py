"""The reference ratio: p_target / mean over references, the simplified ratio of RMIA's code."""

from attacks import reference_ratio

from . import Attack, register


@register
class ReferenceRatio(Attack):
    name = "reference_ratio"
    description = "p_target(x) / mean_k p_k(x), a baseline"
    paper = "Zarifzadeh, Liu, Shokri, ICML 2024 (the simplified ratio of the paper's code)"
    access = "confidence"
    signals = ("probability",)
    references = "any"
    default = True
    order = 70

    def score(self, data):
        return reference_ratio(data.p_target.mean(0), data.p_references_mean)
