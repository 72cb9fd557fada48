"""TrajectoryRecorder: a model's rescaled logits on the audit set and the population at
every validation epoch (audit/trajectory.py), for the trajectory attack. The target's are
recorded by MembershipAttack from its own audit pass; the references get this callback
when the target's attacks include one that reads trajectories."""

from __future__ import annotations

import lightning as L

from audit.distributed import Ranks
from audit.trajectory import finish, record


class TrajectoryRecorder(L.Callback):
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        dm = trainer.datamodule
        record(dm, dm.index, trainer.current_epoch, model=pl_module, ranks=Ranks.of(trainer))

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            finish(trainer.datamodule, trainer.datamodule.index)
