"""Train and audit ANN / SNN targets for membership inference.

    python run.py fit                                   # the whole audit on the embedded default
    python run.py fit --data.model_index 2              # train only model 2 (a reference; 0 is the target)
    python run.py audit --queries '[plain, "dropout:p=0.01,n=10"]' --latencies '[1, 2, 4]'
    python run.py fit --config configs/fashion_mnist.yaml
    python run.py test --run_dir runs/default           # population accuracy of the target's last checkpoint
    python run.py fit --print_config                    # the resolved configuration
    python run.py submit --config CFG --partition gpu --time 12:00:00 --submit   # SLURM: reference array, then the target
    python run.py study --config configs/study/digits.yml   # a matrix of models on one plan, one report

Every run reads configs/default.yaml first, then any --config files, then flags.
`fit` with data.model_index null trains every missing reference model, then the
target with the MembershipAttack callback, and writes run_dir/audit/. A rerun skips
finished models and resumes interrupted ones from their last checkpoint.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerStatus

from callbacks import ATTACKS, MembershipAttack
from callbacks.cache import file_sha256, model_dir, write_json
from datamodules import ConfigError, MembershipDataModule
from lightning_modules import Classifier
from lightning_modules.networks import keep_large_tensors_in_heap

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "audit")


class AuditTrainer(L.Trainer):
    def audit(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
              queries: list[str] = ["plain"], latencies: list[int] | None = None,
              attacks: list[str] = list(ATTACKS), query_seed: int = 0, audit_subset: int | None = None,
              rmia_offline_a: float = 0.3, rmia_gamma: float = 1.0, rmia_per_query: bool = False,
              lira_fix_variance: bool | None = None, report_dir: str | None = None) -> None:
        """Attack finished checkpoints without training: one report row per attack x query x latency.

        Args:
            queries: query strategies: plain, flip, "dropout:p=0.01,n=10[,per_timestep=true]".
            latencies: SNN inference latencies T' to audit (null: the trained T).
            attacks: attacks to run (default: all).
            query_seed: seed of the input-dropout masks.
            audit_subset: audit a fixed random subset of this many samples.
            rmia_offline_a, rmia_gamma, rmia_per_query, lira_fix_variance: as in MembershipAttack.
            report_dir: where report.{md,json} and the plots go (null: run_dir/audit, which the
                training callback also writes); the signal cache stays in run_dir.
        """
        raise NotImplementedError("run through `python run.py audit`")


class ConfigToLoggers(SaveConfigCallback):
    """Saves config.yaml next to the logs and gives the resolved config to W&B as the run config."""

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
    from lightning.pytorch.cli import instantiate_class

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


def _check_resumable(path: Path, index: int) -> None:
    """A checkpoint cut short by a kill mid-write ends in one line naming it, not a traceback."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"checkpoint {path} cannot be resumed ({first}); delete it to retrain model_{index} "
                          "from scratch") from None


class OneLineErrorParser(LightningArgumentParser):
    """A bad flag or config value (a wrong type, an unknown key) ends in one line,
    `error: <what jsonargparse said>`, and exit status 2, as ConfigError does; not in
    jsonargparse's usage block. `--help` still prints the full usage."""

    MAX_CHARS = 600  # a Union's message lists every alternative; the start names the key

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        if len(text) > self.MAX_CHARS:
            text = text[: self.MAX_CHARS - 3] + "..."
        sys.stderr.write(f"error: {text} (see --help)\n")
        self.exit(2)


class AuditCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "audit": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=str, default="runs/default",
                            help="Run directory: membership plan, one model_<k>/ per model, audit/ reports.")
        parser.add_argument("--references", type=dict[str, Any] | None, default=None,
                            help="Model settings that differ for the reference models, e.g. {kind: ann}.")
        parser.link_arguments("run_dir", "data.run_dir")
        for key in ("num_classes", "input_shape", "normalization"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    @property
    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg
        index = cfg.data.model_index or 0
        if index > 0 and cfg.references:  # training one reference alone: apply its overrides
            allowed = set(inspect.signature(Classifier.__init__).parameters) - {"self", "num_classes", "input_shape",
                                                                                "normalization"}
            bad = sorted(set(cfg.references) - allowed)
            if bad:
                raise ConfigError(f"references={dict(cfg.references)!r}: unknown model key(s) {bad}; allowed: {sorted(allowed)}")
            for k, v in cfg.references.items():
                cfg.model[k] = v
        # Model k is initialised with seed seed_everything + k: references are independent
        # draws, and any model retrained alone gets the same initialisation.
        if cfg.seed_everything is not False:
            L.seed_everything(int(cfg.seed_everything) + index, workers=True, verbose=False)

    def instantiate_trainer(self, **kwargs):
        trainer_cfg = self._cfg.trainer
        index = self.datamodule.index
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(model_dir(self._cfg.run_dir, index))
        kwargs["logger"] = make_logger(trainer_cfg.get("logger"), self._cfg.run_dir, index)
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        # Ours is the checkpoint that resume and the signal caches rely on: run_dir/model_<k>/checkpoints/last.ckpt.
        kwargs["callbacks"] = [*configured, self._checkpoint(index)]
        return super().instantiate_trainer(**kwargs)

    def _checkpoint(self, index: int) -> ModelCheckpoint:
        # One file, overwritten at every epoch end: checkpoints/last.ckpt (save_top_k=0 with
        # save_last=True saves nothing until the end of fit in Lightning 2.6).
        return ModelCheckpoint(dirpath=model_dir(self._cfg.run_dir, index) / "checkpoints", filename="last",
                               save_top_k=1, enable_version_counter=False)

    # -- fit: references on demand, then the target ------------------------------------------
    def fit(self, model, datamodule, ckpt_path=None, **kwargs):
        run_dir = self._cfg.run_dir
        # The plan is written (or checked) once, by global rank 0, before anything trains
        # (under `ddp` the other ranks start later, at the first trainer.fit; under SLURM or
        # torchrun they start now and read it in setup(), after Lightning's prepare_data
        # barrier: prepare_data_per_node=False keeps every other node from writing it too).
        if self.trainer.global_rank == 0:
            datamodule.prepare_data()
        datamodule.prepare_data_per_node = False
        for cb in self.trainer.callbacks:
            if isinstance(cb, MembershipAttack):
                cb.check()  # a bad audit setting fails now, not after the references trained
        if self._cfg.data.model_index is None:
            K = datamodule.num_references
            todo = [k for k in range(1, K + 1) if not (model_dir(run_dir, k) / "done.json").is_file()]
            say = self.trainer.global_rank == 0  # under DDP every rank runs this loop; one prints
            if K and say:
                print(f"references: {K - len(todo)}/{K} finished; training {todo or 'none'}", file=sys.stderr)
            for n, k in enumerate(todo, 1):
                if say:
                    print(f"[reference {n}/{len(todo)}] model_{k}", file=sys.stderr)
                trainer, reference, dm = self._reference(k)
                # Same run, same plan: rank 0 hands over the one it checked (ddp_spawn trains in other
                # processes, so this one's setup() never runs, and done.json needs the plan).
                dm.plan, dm.prepare_data_per_node = datamodule.plan, False
                self._train(trainer, reference, dm, None)
        self._train(self.trainer, model, datamodule, ckpt_path)

    def _reference(self, k: int):
        """A fresh trainer, model and data module for reference k (no audit callback)."""
        cfg = self._cfg
        L.seed_everything(int(cfg.seed_everything or 0) + k, workers=True, verbose=False)
        hp = {key: v for key, v in self.model.hparams.items() if not key.startswith("_")}
        model = Classifier(**{**hp, **(cfg.references or {})})
        dm_hp = {key: v for key, v in self.datamodule.hparams.items() if not key.startswith("_")}
        dm = MembershipDataModule(**{**dm_hp, "model_index": k})
        from lightning.pytorch.cli import instantiate_class

        trainer_kwargs = {}
        for key, v in cfg.trainer.as_dict().items():
            if key not in ("callbacks", "logger"):  # fresh objects per trainer (strategy, plugins, ...)
                trainer_kwargs[key] = instantiate_class((), v) if isinstance(v, dict) and "class_path" in v else v
        trainer_kwargs.update(default_root_dir=str(model_dir(cfg.run_dir, k)),
                              logger=make_logger(cfg.trainer.get("logger"), cfg.run_dir, k),
                              callbacks=[self._checkpoint(k)])
        return AuditTrainer(**trainer_kwargs), model, dm

    def _train(self, trainer, model, datamodule, ckpt_path) -> None:
        directory = model_dir(self._cfg.run_dir, datamodule.index)
        done, last = directory / "done.json", directory / "checkpoints" / "last.ckpt"
        if done.is_file() and ckpt_path is None:
            print(f"model_{datamodule.index} finished earlier ({done}); skipping. "
                  f"`run.py audit` re-attacks it; a new --run_dir retrains.", file=sys.stderr)
            return
        if ckpt_path is None:
            # The newest of last.ckpt (every epoch end) and Lightning's SLURM requeue checkpoint
            # (hpc_ckpt_*.ckpt, written mid-epoch on SIGUSR1), so a requeued job loses no work.
            found = [p for p in (last, *directory.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
            if found:
                ckpt_path = str(max(found, key=lambda p: p.stat().st_mtime_ns))
                print(f"resuming model_{datamodule.index} from {ckpt_path}", file=sys.stderr)
                _check_resumable(Path(ckpt_path), datamodule.index)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.state.status == TrainerStatus.FINISHED and trainer.is_global_zero and last.is_file():
            hp = model.hparams
            write_json(done, {"checkpoint": "checkpoints/last.ckpt", "checkpoint_sha256": file_sha256(last),
                              "epochs": trainer.current_epoch, "kind": hp.kind, "arch": hp.arch,
                              "T": hp.T if hp.kind == "snn" else None, "plan": datamodule.plan.fingerprint})

    # -- audit, validate, test ---------------------------------------------------------------
    def audit(self, model, datamodule, **kwargs):
        from callbacks.audit import AuditRun, check_audit, run_audit

        if self.trainer.global_rank == 0:
            datamodule.prepare_data()  # the plan: written (or checked) once, read by every rank
        if self.trainer.world_size == 1:
            datamodule.setup("audit")
            run_audit(datamodule, device=self.trainer.strategy.root_device, **kwargs)
            return
        # Distributed: a bad setting fails here, before any rank is launched; then Lightning
        # launches the ranks at trainer.validate, each queries its shards, rank 0 reports.
        check_audit(self._cfg.run_dir, datamodule.index, **kwargs)
        from lightning.pytorch.cli import instantiate_class

        trainer_kwargs = {}
        for key, v in self._cfg.trainer.as_dict().items():
            if key not in ("callbacks", "logger"):  # fresh objects (strategy, plugins, ...) as in _reference
                trainer_kwargs[key] = instantiate_class((), v) if isinstance(v, dict) and "class_path" in v else v
        # No loggers, callbacks or checkpoints: the audit writes run_dir/audit/ itself.
        trainer_kwargs.update(default_root_dir=str(model_dir(self._cfg.run_dir, datamodule.index)), logger=False,
                              callbacks=[], enable_checkpointing=False, enable_model_summary=False,
                              limit_val_batches=None, fast_dev_run=False)
        trainer = L.Trainer(**trainer_kwargs)
        trainer.validate(AuditRun(datamodule, **kwargs), dataloaders=AuditRun.loader(trainer.world_size),
                         verbose=False)

    def _evaluate(self, fn, model, datamodule, ckpt_path=None, **kwargs):
        if ckpt_path is None:
            last = model_dir(self._cfg.run_dir, self.datamodule.index) / "checkpoints" / "last.ckpt"
            if not last.exists():
                raise ConfigError(f"run_dir={self._cfg.run_dir!r}: no checkpoint at {last}; "
                                  "train it with `run.py fit` or pass --ckpt_path")
            ckpt_path = str(last)
        fn(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def validate(self, model, datamodule, ckpt_path=None, **kwargs):
        self._evaluate(self.trainer.validate, model, datamodule, ckpt_path, **kwargs)

    def test(self, model, datamodule, ckpt_path=None, **kwargs):
        self._evaluate(self.trainer.test, model, datamodule, ckpt_path, **kwargs)


def cli_main(args: list[str] | None = None, run: bool = True) -> AuditCLI:
    per_command = {"parser_mode": "omegaconf", "default_config_files": [str(DEFAULT_CONFIG)]}
    return AuditCLI(
        Classifier,
        MembershipDataModule,
        trainer_class=AuditTrainer,
        parser_class=OneLineErrorParser,
        subclass_mode_model=False,
        subclass_mode_data=False,
        seed_everything_default=0,
        save_config_callback=ConfigToLoggers,
        save_config_kwargs={"overwrite": True},
        # Subcommand parsers take their own kwargs; without subcommands (run=False) the main one does.
        parser_kwargs={sub: dict(per_command) for sub in SUBCOMMANDS} if run else per_command,
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> int:
    argv = sys.argv[1:] if args is None else list(args)
    keep_large_tensors_in_heap()  # CPU: reuse freed 32 MiB+ activations (lightning_modules/networks.py)
    if argv[:1] == ["submit"]:  # SLURM scripts for the same config (docs/cluster.md); not a Trainer method
        from cluster.slurm import submit_main

        return submit_main(argv[1:])
    if argv[:1] == ["study"]:  # fit + audit a matrix of runs on one plan, one report (study/runner.py)
        from study.runner import study_main

        return study_main(argv[1:])
    try:
        cli_main(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
