"""Logs a DP-SGD model's white-box canary bound (`model.dp.audit_canaries`) at the end of every
training epoch as `dp/canary_eps_lb`, beside the accountant's `dp/epsilon`, for every model that
has canaries (the target and references alike). Only the final value, the one in done.json and
the report, is the 95% bound; the per-epoch values are looks at the data, uncorrected."""

from __future__ import annotations

import lightning as L

from audit.canaries import whitebox_canary_audit


class WhiteBoxCanaryLog(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        audit = whitebox_canary_audit(pl_module)
        if audit is not None:
            pl_module.log("dp/canary_eps_lb", audit["eps_lb"], on_step=False, on_epoch=True)
