"""An attack of your own, run by the tool beside its registered attacks:

    python run.py audit --attacks '[rmia_offline, {class_path: examples.my_attack.DifficultyCalibration}]'
    python run.py fit --trainer.callbacks.attacks '[{class_path: examples.my_attack.DifficultyCalibration, init_args: {use: median}}]'

The class declares what it is and what it needs; the tool computes those signals, checks
that the references it asks for exist, and puts its numbers in report.json, report.md, the
W&B keys (attack/calibrated_loss/auc, ...) and the study tables under its `name`.
"""

from __future__ import annotations

import torch

from audit.attacks import Attack, Setting
from core.errors import check_choice


class DifficultyCalibration(Attack):
    """The target's rescaled logit minus what OUT references give the same sample: a sample
    that is easy for every model scores low, one that only the target fits well scores high.

    Args:
        use: how the OUT references' rescaled logits are summarised: mean or median.
    """

    name = "calibrated_loss"
    description = "target rescaled logit minus the OUT references' (difficulty calibration)"
    paper = "Watson et al., On the Importance of Difficulty Calibration in Membership Inference Attacks, ICLR 2022"
    access = "confidence"                  # label < confidence < steps < spikes < membrane
    signals = ("rescaled_logit",)          # what the engine must compute for it
    references = "out"                     # none | any | out | in_out
    settings = {"use": Setting("mean", str, "mean or median of the OUT references",
                               lambda key, value: check_choice(key, value, ("mean", "median")))}

    def score(self, data) -> torch.Tensor:
        phi_t, phi_r = data.phi_target, data.phi_references      # [N], [K, N] (averaged over queries)
        out = ~data.ref_in                                       # [K, N]: reference k did not train on j
        if self.args["use"] == "mean":
            ref = (phi_r * out).sum(0) / out.sum(0)
        else:
            ref = torch.where(out, phi_r, torch.nan).nanmedian(0).values
        return phi_t - ref
