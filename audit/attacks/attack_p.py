"""Attack-P: the target's own confidence, no reference model."""

from attacks import attack_p

from . import Attack, register


@register
class AttackP(Attack):
    name = "attack_p"
    description = "the target's true-class probability itself"
    paper = "Ye et al., Enhanced Membership Inference Attacks against Machine Learning Models, CCS 2022"
    access = "confidence"
    signals = ("probability",)
    references = "none"
    default = study = finding = True
    order = 10

    def score(self, data):
        return attack_p(data.p_target.mean(0))
