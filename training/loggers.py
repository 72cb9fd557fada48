"""The loggers of one model: CSV by default (no network), or the configured ones built for
model k, with W&B given a stable per-model run id. Nothing a logger wrote before is
deleted or overwritten: a resumed fit appends to model_<k>/logs/metrics.csv, `test` and
`validate` write logs/test/ and logs/validate/, and each run's config goes to a new file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import csv
import os
import sys

from lightning.pytorch.cli import SaveConfigCallback, instantiate_class
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from core.rundir import model_dir


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv is continued, not deleted:
    its header is read back, and rows are appended (the file is rewritten only when a new
    column appears, keeping every row)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(header))


class AppendingCSVLogger(CSVLogger):
    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class ConfigToLoggers(SaveConfigCallback):
    """Saves each run's resolved config next to its logs without replacing an earlier one
    (config.yaml, then config_1.yaml, ...), and gives it to W&B as the run config."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        log_dir = trainer.log_dir
        if log_dir is not None and not self.already_saved:
            n, name = 0, "config.yaml"
            while os.path.exists(os.path.join(log_dir, name)):
                n += 1
                name = f"config_{n}.yaml"
            self.config_filename = name
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams({"config": self.config.as_dict()})


def wandb_id(run_dir: str | Path, index: int) -> str:
    """Stable per (run directory, model index): a restarted job continues the same W&B run."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return f"{Path(run_dir).name[:40]}-{digest}-m{index}"


def model_facts_for_logs(hparams, index: int) -> dict:
    """What a dashboard groups and filters runs by: the model's role, kind, architecture and T."""
    get = hparams.get if hasattr(hparams, "get") else (lambda k, d=None: getattr(hparams, k, d))
    kind = get("kind")
    return {"model": f"model_{index}", "role": "target" if index == 0 else "reference", "kind": kind,
            "arch": get("arch"), "T": get("T") if kind == "snn" else None}


def make_logger(spec: Any, run_dir: str | Path, index: int, stage: str | None = None, facts: dict | None = None):
    """The configured logger, built for model `index`: CSV by default (no network), in
    model_<k>/logs/ for fit and model_<k>/logs/<stage>/ for test and validate. A WandbLogger
    gets a run of its own per model (a stable id, resume='allow'; test and validate runs get
    their own ids too), the run directory's name as its group, the model's `facts` (role,
    kind, arch, T) in its config and as tags, and its save_dir in model_<k>/."""
    directory = model_dir(run_dir, index)
    if spec in (None, True):
        return AppendingCSVLogger(save_dir=str(directory), name="logs", version=stage or "")
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
            suffix = f"-{stage}" if stage else ""
            defaults = {"save_dir": str(directory), "name": f"{Path(run_dir).name}/model_{index}{suffix}",
                        "group": Path(run_dir).name, "id": wandb_id(run_dir, index) + suffix, "resume": "allow",
                        "job_type": stage or ("target" if index == 0 else "reference")}
            for key, value in defaults.items():
                if init.get(key) in (None, "", "."):
                    init[key] = value
            if init.get("settings") is None:
                # W&B's own console output (about 80 lines for a K = 2 fit: a banner, history
                # sparklines and a summary per run) off; finish_runs prints one line per run
                # instead. A user's own `settings` is left as given.
                import wandb

                init["settings"] = wandb.Settings(silent=True)
            if facts:
                init["config"] = {**facts, **(init.get("config") or {})}
                tags = [f"{k}={v}" for k, v in facts.items() if k in ("role", "kind", "arch", "T") and v is not None]
                init["tags"] = list(dict.fromkeys([*(init.get("tags") or []), *tags]))
        loggers.append(instantiate_class((), {"class_path": s["class_path"], "init_args": init}))
    return loggers if isinstance(spec, list) else loggers[0]


def finish_runs(trainer) -> None:
    """End the W&B run of each WandbLogger of `trainer`: a run left open is taken over by the
    next model's logger in the same process (every model's metrics in one run). Prints one
    line per run: its name and where it is (offline: its folder and the command that uploads
    it), in place of W&B's own output, which make_logger turns off."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            run = logger.experiment
            line = run_line(run)
            run.finish()
            logger._experiment = None
            if line and trainer.is_global_zero:
                print(line, file=sys.stderr, flush=True)


def run_line(run) -> str | None:
    """`W&B run <name>: <where>` for a wandb Run, or None for a disabled one."""
    try:
        settings = run.settings
        if getattr(settings, "mode", None) == "disabled":
            return None
        if getattr(settings, "mode", None) == "offline" or getattr(run, "offline", False):
            folder = settings.sync_dir
            return f"W&B run {run.name}: offline in {folder}; upload it with: wandb sync {folder}"
        return f"W&B run {run.name}: {run.url}"
    except Exception:  # a line for the user only: never fail a finished training over it
        return None
