"""The trajectory attack: the target's rescaled logits over its training epochs, scored
against IN and OUT references' trajectories by a LiRA with one covariance over the epochs
(attacks/trajectory.py explains the choice). Every model's trajectory is recorded while it
trains (audit/trajectory.py): no extra training, one inference pass per epoch."""

from __future__ import annotations

import torch

from attacks.trajectory import trajectory_lira
from core.rundir import read_done

from . import Attack, register


@register
class Trajectory(Attack):
    name = "trajectory"
    description = "LiRA on rescaled-logit trajectories over the training epochs, one shared covariance"
    paper = "Liu et al., Membership Inference Attacks by Exploiting Loss Trajectory, CCS 2022 (with real trajectories)"
    access = "confidence"
    signals = ("trajectory",)
    references = "in_out"
    order = 90
    study = True  # a column of the study tables when a study runs it (not in the default selection)

    def prepare(self, context) -> dict:
        from audit.trajectory import read_epoch, recorded_epochs

        dm = context.dm
        own = recorded_epochs(dm, context.target, context.checkpoint_sha256)
        if context.epoch is not None:
            own = [e for e in own if e <= context.epoch]
        common = set(own)
        for k in context.references:
            common &= set(recorded_epochs(dm, k, read_done(dm.run_dir, k).get("checkpoint_sha256")))
        epochs = sorted(common)
        if len(epochs) < 2:
            missing = [k for k in context.references if not recorded_epochs(dm, k)]
            why = (f"needs the trajectories of >= 2 audited epochs common to the target and every reference; "
                   f"{len(epochs)} found" + (f" (models {missing} have none: train them with trajectory "
                                             "among the callback's attacks)" if missing else ""))
            return {"trajectory": {"skip": why}}
        def stack(k):
            return torch.stack([read_epoch(dm, k, e)["audit"] for e in epochs])  # [E, N]
        return {"trajectory": {"epochs": epochs, "target": stack(context.target),
                               "references": torch.stack([stack(k) for k in context.references])}}

    def cost(self, queries, references, extra):
        """The trajectory is recorded while each model trains: one pass per audited epoch of
        the target and of every reference (the query setting does not change it), and no
        model trained for the attack beyond the references."""
        epochs = len((extra.get("trajectory") or {}).get("epochs") or [])
        return {"models_trained": references, "inference_passes": epochs * (1 + references)}

    def unavailable(self, data):
        t = data.extra.get("trajectory")
        if t is None:
            return "needs trajectories (none were read)"
        return t.get("skip")

    def score(self, data):
        t, positions = data.extra["trajectory"], data.extra.get("positions")
        target, refs = t["target"], t["references"]
        if positions is not None:
            target, refs = target[:, positions], refs[:, :, positions]
        return trajectory_lira(target, refs, data.ref_in)
