"""The white-box attack by a reference-trained classifier: logistic regression on the
references' calibrated membrane summaries, applied to the target's."""

from . import Attack, register
from ._access import CLASSIFIER_PAPER, classifier, too_few


@register
class MembraneClassifier(Attack):
    name = "membrane_classifier"
    description = "logistic regression on the references' calibrated membrane summary"
    paper = CLASSIFIER_PAPER
    access = "membrane"
    signals = ("membrane",)
    references = "in_out"
    order = 270

    def score(self, data):
        return classifier(data, "membrane")

    def unavailable(self, data):
        return super().unavailable(data) or too_few(data, 2, "(a leave-one-out calibration)")
