"""Test-only Lightning callbacks, importable by the CLI as `helpers.<Name>`."""

import lightning as L


class Interrupt(L.Callback):
    """Raise in the middle of an epoch, as a killed job would stop."""

    def __init__(self, epoch: int = 1, batch: int = 2):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated kill")
