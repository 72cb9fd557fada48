"""What a user sees while models train: one line when a model starts ("model 3 of 5:
reference 2"), one bar over its epochs on a terminal (one line at most every 30 s in a log
file, where a bar per batch wrote 765 KB for the default run), and none of Lightning's
per-trainer banners and tips, which this tool triggers once per model (15 lines per fit).
Warnings the tool itself provokes are filtered by their exact text; every other warning
still reaches the user."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings

from lightning.pytorch.callbacks import ProgressBar

from audit.attacks import names_with

# rank_zero_info lines Lightning prints for every trainer: hardware banners, product tips,
# and the end-of-fit notice (the tool prints its own report).
_BANNERS = ("GPU available", "TPU available", "HPU available", "💡 Tip", "`Trainer.fit` stopped", "Seed set to")
# Warnings the tool causes on purpose, by the start of their text (a regular expression).
_OURS = (
    # a resumed model writes into its own checkpoints folder again
    re.escape("Checkpoint directory"),
    # every pool is a tensor in memory: loader workers would only copy it (data.num_workers stays available)
    r"The '\w+' does not have many workers",
    # a small run has fewer batches per epoch than trainer.log_every_n_steps: Lightning still
    # logs at the end of every epoch, so nothing is lost
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # raised inside Lightning by torch >= 2.14's pytree; nothing a user can change
    re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
)

HEADLINE = names_with("headline")[0]  # the attack of the epoch line (audit/attacks/)


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.getMessage())
        return not (text.startswith(_BANNERS) or text.startswith("[rank: 0] Seed set to"))


def quiet_lightning() -> None:
    """Install the filters (idempotent). In a log file (stderr not a terminal) tqdm's bars,
    spikingjelly's conversion bar among them, are switched off too (TQDM_DISABLE)."""
    if not interactive():
        os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropBanners) for f in log.filters):
            log.addFilter(_DropBanners())
    for pattern in _OURS:
        warnings.filterwarnings("ignore", message=pattern)


def say(text: str) -> None:
    """A progress line for the user (stderr, flushed: it must show up in a job's log at once)."""
    print(text, file=sys.stderr, flush=True)


def interactive() -> bool:
    return sys.stderr.isatty()


class EpochProgress(ProgressBar):
    """One bar over a model's epochs (train and validation accuracy and the audit's offline
    headline attack's AUC in the postfix) on a terminal; in a log file, a line when at least
    `min_interval` seconds passed since the last one, and always for the last epoch."""

    def __init__(self, label: str = "", min_interval: float = 30.0):
        super().__init__()
        self.label = label
        self.min_interval = min_interval
        self.interactive = interactive()
        self._enabled = True
        self._bar = None
        self._last = 0.0
        self._start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _summary(self, trainer) -> str:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        parts = [f"{k} {m[k]:.3f}" for k in ("train/acc", "val/acc") if k in m]
        key = f"attack/{HEADLINE}/auc"
        if key in m:
            parts.append(f"{HEADLINE} AUC {m[key]:.3f}")
        return ", ".join(parts)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        if self.interactive and self._enabled and trainer.is_global_zero:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.max_epochs, initial=trainer.current_epoch, desc=self.label or "training",
                             unit="epoch", file=sys.stderr, dynamic_ncols=True, leave=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        summary = self._summary(trainer)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(summary, refresh=True)
            return
        now, last_epoch = time.monotonic(), trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if now - self._last >= self.min_interval or last_epoch:
            self._last = now
            say(f"  {self.label + ' ' if self.label else ''}epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
                f"{': ' + summary if summary else ''} [{now - self._start:.0f} s]")

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
