"""The label-only attack: the target's correctness rate over the Q queries (the query
strategy's masks are the perturbations; with plain queries it is right-or-wrong), minus the
OUT references' rate on the same sample (its difficulty). It sees only the predicted class."""

from . import Attack, register


@register
class LabelOnly(Attack):
    name = "label_only"
    description = "correctness rate over the queries minus the OUT references' (label only)"
    paper = "Choquette-Choo et al., Label-Only Membership Inference Attacks, ICML 2021 (queries as perturbations)"
    access = "label"
    signals = ("correct",)
    references = "any"
    order = 200

    def score(self, data):
        from attacks.access import label_only

        return label_only(data.correct_target, data.correct_references, data.ref_in)
