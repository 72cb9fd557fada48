"""Training the models of a run: the missing references, then the target; trainers built per
model; resume from the newest checkpoint; the `done.json` record of a finished model.

`run.py fit` with data.model_index null trains every reference that has no done.json,
each in this process with a fresh trainer (no user callbacks: those apply to the
target), then the target with the configured trainer and its callbacks. Model k is
initialised with seed `seed_everything + k`, so a model retrained alone (data.model_index
k, as a cluster array task does) gets the same initialisation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.trainer.states import TrainerStatus

from core.rundir import (checkpoint_path, done_path, file_sha256, finished_models, model_dir, read_checkpoint,
                         requeue_checkpoints, write_done)
from datamodules import MembershipDataModule
from lightning_modules import Classifier

from .loggers import make_logger


def checkpoint_callback(run_dir, index: int) -> ModelCheckpoint:
    """The checkpoint that resume and the signal caches rely on: run_dir/model_<k>/checkpoints/last.ckpt,
    one file overwritten at every epoch end (save_top_k=0 with save_last=True saves nothing
    until the end of fit in Lightning 2.6)."""
    return ModelCheckpoint(dirpath=checkpoint_path(run_dir, index).parent, filename="last", save_top_k=1,
                           enable_version_counter=False)


def fresh_trainer_kwargs(trainer_cfg: dict) -> dict:
    """The configured trainer settings without callbacks and logger, with fresh objects
    (strategy, plugins, ...) built from their class_path specs: one trainer's objects must
    not be shared with another's."""
    return {key: instantiate_class((), v) if isinstance(v, dict) and "class_path" in v else v
            for key, v in trainer_cfg.items() if key not in ("callbacks", "logger")}


def reference_parts(k: int, target_model: Classifier, target_dm: MembershipDataModule, cfg, trainer_class):
    """A fresh trainer, model and data module for reference k (no audit callback)."""
    L.seed_everything(int(cfg.seed_everything or 0) + k, workers=True, verbose=False)
    hp = {key: v for key, v in target_model.hparams.items() if not key.startswith("_")}
    model = Classifier(**{**hp, **(cfg.references or {})})
    dm_hp = {key: v for key, v in target_dm.hparams.items() if not key.startswith("_")}
    dm = MembershipDataModule(**{**dm_hp, "model_index": k})
    kwargs = fresh_trainer_kwargs(cfg.trainer.as_dict())
    kwargs.update(default_root_dir=str(model_dir(cfg.run_dir, k)),
                  logger=make_logger(cfg.trainer.get("logger"), cfg.run_dir, k), callbacks=[checkpoint_callback(cfg.run_dir, k)])
    return trainer_class(**kwargs), model, dm


def fit_run(trainer, model, datamodule, cfg, ckpt_path=None) -> None:
    """`run.py fit`: the missing references (when data.model_index is null), then the model
    of data.model_index (the target by default)."""
    run_dir = cfg.run_dir
    # The plan is written (or checked) once, by global rank 0, before anything trains
    # (under `ddp` the other ranks start later, at the first trainer.fit; under SLURM or
    # torchrun they start now and read it in setup(), after Lightning's prepare_data
    # barrier: prepare_data_per_node=False keeps every other node from writing it too).
    if trainer.global_rank == 0:
        datamodule.prepare_data()
    datamodule.prepare_data_per_node = False
    if cfg.data.model_index is None:
        K = datamodule.num_references
        todo = [k for k in range(1, K + 1) if k not in finished_models(run_dir, range(1, K + 1))]
        say = trainer.global_rank == 0  # under DDP every rank runs this loop; one prints
        if K and say:
            print(f"references: {K - len(todo)}/{K} finished; training {todo or 'none'}", file=sys.stderr)
        for n, k in enumerate(todo, 1):
            if say:
                print(f"[reference {n}/{len(todo)}] model_{k}", file=sys.stderr)
            ref_trainer, reference, dm = reference_parts(k, model, datamodule, cfg, type(trainer))
            # Same run, same plan: rank 0 hands over the one it checked (ddp_spawn trains in other
            # processes, so this one's setup() never runs, and done.json needs the plan).
            dm.plan, dm.prepare_data_per_node = datamodule.plan, False
            train_model(ref_trainer, reference, dm, cfg, None)
    train_model(trainer, model, datamodule, cfg, ckpt_path)


def resume_checkpoint(run_dir, index: int) -> Path | None:
    """The newest of last.ckpt (every epoch end) and Lightning's SLURM requeue checkpoint
    (hpc_ckpt_*.ckpt, written mid-epoch on SIGUSR1), so a requeued job loses no work; a
    file cut short by a kill mid-write ends in one line naming it."""
    found = [p for p in (checkpoint_path(run_dir, index), *requeue_checkpoints(run_dir, index)) if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    read_checkpoint(newest, label=f"checkpoint {newest}",
                    hint=f"it cannot be resumed; delete it to retrain model_{index} from scratch")
    return newest


def train_model(trainer, model, datamodule, cfg, ckpt_path=None) -> None:
    """Fit one model unless it finished earlier; resume it from its newest checkpoint; write
    its done.json when training finished."""
    run_dir, index = cfg.run_dir, datamodule.index
    if done_path(run_dir, index).is_file() and ckpt_path is None:
        print(f"model_{index} finished earlier ({done_path(run_dir, index)}); skipping. "
              f"`run.py audit` re-attacks it; a new --run_dir retrains.", file=sys.stderr)
        return
    if ckpt_path is None:
        found = resume_checkpoint(run_dir, index)
        if found is not None:
            ckpt_path = str(found)
            print(f"resuming model_{index} from {ckpt_path}", file=sys.stderr)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    last = checkpoint_path(run_dir, index)
    if trainer.state.status == TrainerStatus.FINISHED and trainer.is_global_zero and last.is_file():
        hp = {k: v for k, v in model.hparams.items() if not k.startswith("_")}
        write_done(run_dir, index, {
            "checkpoint": "checkpoints/last.ckpt", "checkpoint_sha256": file_sha256(last),
            "epochs": trainer.current_epoch, "model_index": index,
            "kind": hp.get("kind"), "arch": hp.get("arch"), "T": hp.get("T") if hp.get("kind") == "snn" else None,
            "init": hp.get("init"), "init_from": hp.get("init_from"),
            # What the run gave its references, so a later step (the study) reads facts, not flags.
            "references": dict(cfg.references) if cfg.references else None,
            # DP-SGD: the accountant's epsilon and what it rests on (None without model.dp).
            "dp": model.dp_facts(),
            "plan": datamodule.plan.fingerprint, "hparams": {k: _plain(v) for k, v in hp.items()}})


def _plain(value):
    """A hyper-parameter as JSON holds it (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
