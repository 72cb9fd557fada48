"""The spikes attack by a reference-trained classifier: logistic regression on the
references' log(1 + spikes) rows, each calibrated by the sample's mean over the other
references (label: the reference trained on it), applied to the target's rows."""

from . import Attack, register
from ._access import CLASSIFIER_PAPER, classifier, too_few


@register
class SpikesClassifier(Attack):
    name = "spikes_classifier"
    description = "logistic regression on the references' calibrated log(1 + spikes) per layer"
    paper = CLASSIFIER_PAPER
    access = "spikes"
    signals = ("spikes",)
    references = "in_out"
    order = 250

    def score(self, data):
        return classifier(data, "spikes")

    def unavailable(self, data):
        return super().unavailable(data) or too_few(data, 2, "(a leave-one-out calibration)")
