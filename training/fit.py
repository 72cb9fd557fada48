"""Training the models of a run: the missing references, then the target; trainers built per
model; resume from the newest checkpoint; the `done.json` record of a finished model.

`run.py fit` with data.model_index null trains every reference that has no done.json,
each in this process with a fresh trainer (no user callbacks: those apply to the
target), then the target with the configured trainer and its callbacks. Model k is
initialised with seed `seed_everything + k`, so a model retrained alone (data.model_index
k, as a cluster array task does) gets the same initialisation.

Kill anywhere, rerun, same result (docs/design.md, "Run-directory integrity"):
- checkpoints are written atomically, with their hash next to them (AtomicCheckpointIO);
- every epoch's randomness is a function of (model seed, epoch) alone (EpochSeeds and the
  data module's EpochShuffle), so an epoch replayed after a kill is the uninterrupted one;
- a model is finished (done.json) only when everything it owes exists: for the target,
  the report and its plots, which a rerun rebuilds from the last checkpoint if a kill
  stopped them;
- one process trains a model at a time (core.rundir.ModelLock).
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerStatus

from audit.canaries import dp_facts_with_canaries
from callbacks import WhiteBoxCanaryLog
from core.errors import ConfigError
from core.faults import kill_point
from core.rundir import (ModelLock, checkpoint_path, damaged, done_path, file_sha256, finished_models, model_dir,
                         read_checkpoint, requeue_checkpoints, retire_model_folder, retrain_command, sidecar,
                         verify_finished, write_checkpoint_file, write_done)
from core.seeds import derive_seed
from datamodules import MembershipDataModule
from lightning_modules import Classifier, net_name

from .console import EpochProgress, say
from .loggers import finish_runs, make_logger, model_facts_for_logs


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic (a temporary file, then a rename) and with
    the file's hash recorded next to it: a kill during the write leaves the previous
    checkpoint, and a file changed later is refused when read (core.rundir)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        write_checkpoint_file(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        sidecar(Path(path)).unlink(missing_ok=True)


class EpochSeeds(L.Callback):
    """Seeds torch, numpy and random at the start of every training epoch from (seed, epoch):
    what the model draws during an epoch (Poisson spike trains, dropout) does not depend on
    what ran before it in the process (an audit pass, the references trained before the
    target, a resume)."""

    def __init__(self, seed: int, index: int = 0):
        self.seed, self.index = int(seed), index

    def setup(self, trainer, pl_module, stage: str) -> None:
        if hasattr(trainer.datamodule, "train_seed"):
            trainer.datamodule.train_seed = self.seed  # the data order and augmentation, likewise

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        seed = derive_seed(self.seed, "epoch", trainer.current_epoch)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        kill_point(f"batch:model_{self.index}:{trainer.current_epoch}:{batch_idx}")  # kill tests only


def checkpoint_callback(run_dir, index: int) -> ModelCheckpoint:
    """The checkpoint that resume and the signal caches rely on: run_dir/model_<k>/checkpoints/last.ckpt,
    one file replaced at every epoch end (save_top_k=0 with save_last=True saves nothing
    until the end of fit in Lightning 2.6)."""
    return ModelCheckpoint(dirpath=checkpoint_path(run_dir, index).parent, filename="last", save_top_k=1,
                           enable_version_counter=False)


def role(index: int) -> str:
    return "the target" if index == 0 else f"reference {index}"


def own_callbacks(cfg, index: int) -> list:
    """The callbacks every trainer of a model gets: its checkpoint, the epoch seeds, and the
    epoch progress (unless trainer.enable_progress_bar is false)."""
    out = [checkpoint_callback(cfg.run_dir, index)]
    if cfg.seed_everything is not False:
        out.append(EpochSeeds(int(cfg.seed_everything) + index, index))
    if cfg.trainer.get("enable_progress_bar") is not False:
        out.append(EpochProgress(f"model_{index}"))
    out.append(WhiteBoxCanaryLog())  # dp/canary_eps_lb per epoch; nothing without model.dp.audit_canaries
    return out


def with_atomic_checkpoints(plugins) -> list:
    plugins = list(plugins or []) if isinstance(plugins, (list, tuple)) else [plugins] if plugins else []
    return plugins if any(isinstance(p, TorchCheckpointIO) for p in plugins) else [*plugins, AtomicCheckpointIO()]


def fresh_trainer_kwargs(trainer_cfg: dict) -> dict:
    """The configured trainer settings without callbacks and logger, with fresh objects
    (strategy, plugins, ...) built from their class_path specs: one trainer's objects must
    not be shared with another's."""
    def build(v):
        if isinstance(v, dict) and "class_path" in v:
            return instantiate_class((), v)
        if isinstance(v, list):
            return [build(x) for x in v]
        return v

    return {key: build(v) for key, v in trainer_cfg.items() if key not in ("callbacks", "logger")}


def reference_parts(k: int, target_model: Classifier, target_dm: MembershipDataModule, cfg, trainer_class,
                    callbacks=()):
    """A fresh trainer, model and data module for reference k (no audit callback; `callbacks`:
    what the target's audit needs of the references, e.g. a trajectory recorder)."""
    L.seed_everything(int(cfg.seed_everything or 0) + k, workers=True, verbose=False)
    hp = {key: v for key, v in target_model.hparams.items() if not key.startswith("_")}
    model = Classifier(**{**hp, **(cfg.references or {})})
    dm_hp = {key: v for key, v in target_dm.hparams.items() if not key.startswith("_")}
    dm = MembershipDataModule(**{**dm_hp, "model_index": k})
    kwargs = fresh_trainer_kwargs(cfg.trainer.as_dict())
    kwargs.update(default_root_dir=str(model_dir(cfg.run_dir, k)), plugins=with_atomic_checkpoints(kwargs.get("plugins")),
                  logger=make_logger(cfg.trainer.get("logger"), cfg.run_dir, k, facts=model_facts_for_logs(model.hparams, k)),
                  callbacks=own_callbacks(cfg, k) + list(callbacks))
    return trainer_class(**kwargs), model, dm


def fit_run(trainer, model, datamodule, cfg, ckpt_path=None) -> None:
    """`run.py fit`: the missing references (when data.model_index is null), then the model
    of data.model_index (the target by default)."""
    run_dir = cfg.run_dir
    # The plan is written (or checked) once, by global rank 0, before anything trains
    # (under `ddp` the other ranks start later, at the first trainer.fit; under SLURM or
    # torchrun they start now and read it in setup(), after Lightning's prepare_data
    # barrier: prepare_data_per_node=False keeps every other node from writing it too).
    for cb in trainer.callbacks:
        if hasattr(cb, "same_references"):  # every model may take its turn as the target only if they are alike
            cb.same_references = not cfg.references
    if trainer.global_rank == 0:
        for cb in trainer.callbacks:  # settings that depend on the plan, before anything is written
            if hasattr(cb, "check_data"):
                cb.check_data(datamodule)
        datamodule.prepare_data()
    datamodule.prepare_data_per_node = False
    speak = trainer.global_rank == 0  # under DDP every rank runs this; one prints
    index = datamodule.index
    if cfg.get("retrain") and speak:
        with ModelLock(run_dir, index):  # nobody trains it while its folder moves
            moved = retire_model_folder(run_dir, index)
        for old, new in moved:
            say(f"--retrain: moved {old} to {new} (kept, not deleted); model_{index} trains from scratch")
    if trainer.global_rank == 0:  # every finished model this run relies on, re-verified before anything trains
        indices = range(datamodule.num_references + 1) if cfg.data.model_index is None else [index]
        facts = training_facts(trainer, datamodule, cfg)
        for k in finished_models(run_dir, indices):
            done = verify_finished(run_dir, k, datamodule.plan.fingerprint)
            hp = {key: v for key, v in model.hparams.items() if not key.startswith("_")}
            if k != index:
                hp.update(cfg.references or {})
            check_finished_settings(done, facts, hp, f"model_{k} finished earlier ({done_path(run_dir, k)}) and")
    if cfg.data.model_index is None:
        K = datamodule.num_references
        todo = [k for k in range(1, K + 1) if k not in finished_models(run_dir, range(1, K + 1))]
        total = len(todo) + (0 if done_path(run_dir, 0).is_file() else 1)
        if K and speak and len(todo) < K:
            say(f"{K - len(todo)} of {K} references finished earlier; {len(todo)} to train")
        for n, k in enumerate(todo, 1):
            if speak:
                say(f"model {n} of {total}: {role(k)} (model_{k})")
            extra = [c for cb in trainer.callbacks if hasattr(cb, "reference_callbacks") for c in cb.reference_callbacks()]
            ref_trainer, reference, dm = reference_parts(k, model, datamodule, cfg, type(trainer), extra)
            # Same run, same plan: rank 0 hands over the one it checked (ddp_spawn trains in other
            # processes, so this one's setup() never runs, and done.json needs the plan).
            # The pool too (the data settings are the target's): decoding ImageNette-320 takes
            # about 27 s on one core here, 10,000 event files of 200k events about 40 s.
            dm.plan, dm.pool, dm.prepare_data_per_node = datamodule.plan, datamodule.pool, False
            train_model(ref_trainer, reference, dm, cfg, None)
        if speak and not done_path(run_dir, 0).is_file():
            say(f"model {total} of {total}: {role(0)} (model_0), audited at every epoch")
    elif speak and not done_path(run_dir, index).is_file():
        say(f"model_{index}: {role(index)}")
    train_model(trainer, model, datamodule, cfg, ckpt_path)


def resume_checkpoint(run_dir, index: int) -> Path | None:
    """The newest of last.ckpt (every epoch end) and Lightning's SLURM requeue checkpoint
    (hpc_ckpt_*.ckpt, written mid-epoch on SIGUSR1), so a requeued job loses no work."""
    found = [p for p in (checkpoint_path(run_dir, index), *requeue_checkpoints(run_dir, index)) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def settings_diff(saved: dict, wanted: dict, has: str = "checkpoint has") -> list[str]:
    """'model.<key>: <has> <saved>, this run asks for <wanted>' for each hyper-parameter that differs."""
    wanted = {k: v for k, v in wanted.items() if not k.startswith("_")}
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 - tuples come back as lists
    return [f"model.{k}: {has} {saved.get(k)!r}, this run asks for {wanted.get(k)!r}"
            for k in sorted(set(saved) | set(wanted)) if not k.startswith("_")
            and norm(saved.get(k)) != norm(wanted.get(k))]


def check_same_settings(saved: dict, model, label: str) -> None:
    """A resume continues the same model: every hyper-parameter of the checkpoint must equal the
    requested one (an SNN's weights continued as an ANN would be another model)."""
    diff = settings_diff(saved, dict(model.hparams))
    if diff:
        raise ConfigError(f"{label} was trained with other model settings ({'; '.join(diff)}); rerun with the "
                          "checkpoint's settings, or use a new --run_dir")


def training_facts(trainer, datamodule, cfg) -> dict:
    """The settings besides the model's hyper-parameters that decide what a model learns,
    recorded in done.json: a rerun with other values is refused, never silently skipped."""
    return {"trainer.max_epochs": trainer.max_epochs, "trainer.max_steps": trainer.max_steps,
            "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
            "trainer.gradient_clip_val": trainer.gradient_clip_val, "data.batch_size": datamodule.batch_size,
            "data.augment": datamodule.augment, "seed_everything": cfg.seed_everything}


def check_finished_settings(done: dict, facts: dict, hparams: dict, label: str) -> None:
    """A finished model is rerun only with the settings it was trained with: each differing
    setting is named with both values (done.json's record against this run's `facts` and
    model `hparams`)."""
    recorded = done.get("training") or {}
    if "trainer.max_epochs" not in recorded and isinstance(done.get("epochs"), int):
        recorded = {"trainer.max_epochs": done["epochs"]}  # a done.json written before the record existed
    diff = [f"{k}: it has {recorded[k]!r}, this run asks for {facts[k]!r}" for k in recorded
            if k in facts and recorded[k] != facts[k]]
    diff += settings_diff(done.get("hparams") or {}, hparams, "it has")
    if diff:
        raise ConfigError(f"{label} was trained with other settings ({'; '.join(diff)}); rerun with its settings, "
                          "or use a new --run_dir to train with these")


def damaged_owed_files(trainer, run_dir, index: int) -> list[str]:
    """The files a finished model owes (the target's report set) that are missing or broken."""
    out = []
    for cb in trainer.callbacks:
        for p in cb.owed_by(run_dir, index) if hasattr(cb, "owed_by") else []:
            why = damaged(p)
            if why:
                out.append(f"{p} ({why})")
    return out


def train_model(trainer, model, datamodule, cfg, ckpt_path=None) -> None:
    """Fit one model unless it finished earlier; resume it from its newest checkpoint; write
    its done.json once everything it owes exists. A finished model is re-verified (its
    folder, checkpoint hash, settings and owed files); a lost report is rebuilt from the
    last checkpoint and the signal caches, with no training."""
    run_dir, index = cfg.run_dir, datamodule.index
    rebuild = False
    if done_path(run_dir, index).is_file() and ckpt_path is None:
        done = verify_finished(run_dir, index, datamodule.plan.fingerprint)
        check_finished_settings(done, training_facts(trainer, datamodule, cfg), dict(model.hparams),
                                f"model_{index} finished earlier ({done_path(run_dir, index)}) and")
        damaged_files = damaged_owed_files(trainer, run_dir, index)
        if not damaged_files:
            if trainer.global_rank == 0:
                say(f"model_{index} finished earlier ({done_path(run_dir, index)}, checkpoint verified); skipping. "
                    f"`run.py audit` re-attacks it; `{retrain_command(index)}` retrains it.")
            return
        if trainer.global_rank == 0:
            say(f"model_{index} finished earlier, but {'; '.join(damaged_files)}: rebuilding from its last "
                "checkpoint and the signal caches (no training)")
        rebuild, ckpt_path = True, str(checkpoint_path(run_dir, index))
    lock = ModelLock(run_dir, index) if trainer.global_rank == 0 else None
    if lock is not None:
        lock.__enter__()
    try:
        if ckpt_path is None:
            found = resume_checkpoint(run_dir, index)
            if found is not None:
                ckpt_path = str(found)
                if trainer.global_rank == 0:  # every rank resumes; one line says so
                    say(f"resuming model_{index} from {ckpt_path}")
        if ckpt_path is not None:  # refused in one line before Lightning unpickles it
            hparams, _, _ = read_checkpoint(ckpt_path, label=f"checkpoint {ckpt_path}",
                                            hint=f"it cannot be resumed; delete it to retrain model_{index} from scratch")
            check_same_settings(hparams, model, f"checkpoint {ckpt_path}")
        try:
            with requeue_signal_window():
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        finally:
            finish_runs(trainer)  # one W&B run per model, even when models train in one process
        kill_point(f"fitted:model_{index}")  # tests only: a window after training, before done.json
        last = checkpoint_path(run_dir, index)
        if trainer.state.status != TrainerStatus.FINISHED or not trainer.is_global_zero or not last.is_file():
            return
        missing = [str(p) for cb in trainer.callbacks if hasattr(cb, "owed_files") for p in cb.owed_files(trainer)
                   if not Path(p).is_file()]
        if missing:
            raise RuntimeError(f"model_{index} finished training but {', '.join(missing)} was not written; "
                               "rerun the same command to write it")
        if rebuild:
            return  # done.json stands as written when the model finished
        hp = {k: v for k, v in model.hparams.items() if not k.startswith("_")}
        write_done(run_dir, index, {
            "checkpoint": "checkpoints/last.ckpt", "checkpoint_sha256": file_sha256(last),
            "epochs": trainer.current_epoch, "model_index": index,
            "kind": hp.get("kind"), "arch": net_name(hp), "T": hp.get("T") if hp.get("kind") == "snn" else None,
            # False for a user SNN that returns [B, classes]: `run.py audit --latencies` refuses it up front.
            "step_readout": bool(model.step_readout) if hp.get("kind") == "snn" else None,
            # The trainer's precision (32-true, bf16-mixed, ...): part of the signal cache key.
            "precision": str(trainer.precision),
            "init": hp.get("init"), "init_from": hp.get("init_from"),
            # What the run gave its references, so a later step (the study) reads facts, not flags.
            "references": dict(cfg.references) if cfg.references else None,
            # DP-SGD: the accountant's epsilon and what it rests on (None without model.dp).
            "dp": dp_facts_with_canaries(model),
            "plan": datamodule.plan.fingerprint, "hparams": {k: _plain(v) for k, v in hp.items()},
            "training": training_facts(trainer, datamodule, cfg)})
        for p in requeue_checkpoints(run_dir, index):  # done: a requeue checkpoint is never resumed again
            p.unlink(missing_ok=True)
            sidecar(p).unlink(missing_ok=True)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


class Interrupted(BaseException):
    """SIGTERM or SIGINT outside SLURM: raised in the main thread, so that Lightning's own
    interrupt handling runs (callbacks' on_exception, loggers finalised) and the process
    ends with 128 + the signal's number. A BaseException, like KeyboardInterrupt: no
    `except Exception` on the way may swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        name = signal.Signals(self.signum).name
        return (f"stopped by {name}: every finished epoch's checkpoint is on disk (written atomically) and the "
                f"interrupted epoch is replayed identically; rerun the same command to resume")


class stop_on_signals:
    """`run.py fit` outside SLURM: SIGTERM (timeout, docker stop, systemd) and SIGINT (Ctrl+C)
    stop the run with exit status 143 and 130, not 0 (Lightning's own SIGTERM handling stops
    the fit loop and returns normally, which a scheduler reads as success). What a resume
    needs is already on disk: the last epoch's checkpoint, replaced atomically at every epoch
    end, and every other file of the run directory is written atomically too. Under SLURM
    nothing changes: Lightning's requeue handling (SIGUSR1, SIGTERM) stays as it is."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.previous: dict = {}

    def __enter__(self):
        from lightning.fabric.plugins.environments import SLURMEnvironment

        if threading.current_thread() is threading.main_thread() and not SLURMEnvironment.detect():
            self.previous = {s: signal.signal(s, self._stop) for s in self.SIGNALS}
        return self

    def _stop(self, signum, frame) -> None:
        for s in self.SIGNALS:  # a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    def __exit__(self, *exc) -> bool:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


class requeue_signal_window:
    """SIGUSR1 (SLURM's "time is almost up", --signal=SIGUSR1@90) is Lightning's to handle while
    a model trains: it saves a requeue checkpoint and requeues the job. Lightning registers its
    handler only if none is set, and puts the default action back when fit returns, so a
    signal arriving after the last model finished would kill a finished job (exit 138, FAILED,
    and SLURM cancels what depends on it). So: the default action during fit, and after it a
    handler that says the work is done and lets the job end normally."""

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None and threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, _finished_handler)
        return False


def _finished_handler(signum, frame) -> None:
    print("SIGUSR1 received after training finished: nothing to save, finishing normally", file=sys.stderr)


def _plain(value):
    """A hyper-parameter as JSON holds it (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
