"""The loggers of one model: CSV by default (no network), or the configured ones built for
model k, with W&B given a stable per-model run id."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import SaveConfigCallback, instantiate_class
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from core.rundir import model_dir


class ConfigToLoggers(SaveConfigCallback):
    """Gives the resolved config to W&B as the run config (config.yaml is saved next to the logs)."""

    def save_config(self, trainer, pl_module, stage) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams({"config": self.config.as_dict()})


def wandb_id(run_dir: str | Path, index: int) -> str:
    """Stable per (run directory, model index): a restarted job continues the same W&B run."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return f"{Path(run_dir).name[:40]}-{digest}-m{index}"


def make_logger(spec: Any, run_dir: str | Path, index: int):
    """The configured logger, built for model `index`: CSV by default (no network); a
    WandbLogger gets a stable id, resume='allow', and a name/group from the run directory."""
    directory = model_dir(run_dir, index)
    if spec in (None, True):
        return CSVLogger(save_dir=str(directory), name="logs", version="")
    if spec is False:
        return False
    specs = spec if isinstance(spec, list) else [spec]
    loggers = []
    for s in specs:
        s = s.as_dict() if hasattr(s, "as_dict") else dict(s)
        init = dict(s.get("init_args") or {})
        if s["class_path"].endswith("WandbLogger"):
            # The parsed config holds every default (save_dir=".", id=None, ...): fill the unset ones.
            directory.mkdir(parents=True, exist_ok=True)  # else wandb falls back to ./wandb
            defaults = {"save_dir": str(directory), "name": f"{Path(run_dir).name}/model_{index}",
                        "group": Path(run_dir).name, "id": wandb_id(run_dir, index), "resume": "allow"}
            for key, value in defaults.items():
                if init.get(key) in (None, "", "."):
                    init[key] = value
        loggers.append(instantiate_class((), {"class_path": s["class_path"], "init_args": init}))
    return loggers if isinstance(spec, list) else loggers[0]
