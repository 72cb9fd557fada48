"""Attack-R: the target's confidence as a percentile among OUT references'."""

from attacks import attack_r

from . import Attack, register


@register
class AttackR(Attack):
    name = "attack_r"
    description = "fraction of OUT references whose probability is at most the target's"
    paper = "Ye et al., Enhanced Membership Inference Attacks against Machine Learning Models, CCS 2022"
    access = "confidence"
    signals = ("probability",)
    references = "out"
    default = study = True
    order = 20

    def score(self, data):
        return attack_r(data.p_target.mean(0), data.p_references_mean, data.ref_in)
