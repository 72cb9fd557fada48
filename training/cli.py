"""The command line of `run.py` (fit, validate, test, audit): a LightningCLI that reads
configs/default.yaml first, then each --config, then flags (omegaconf mode, so ${...}
interpolation works), and routes each subcommand. `parse_config` gives the same
resolved configuration to `run.py study` and `run.py submit` without running anything.

Errors a user can cause end in one line and exit 2: a ConfigError from our checks
(`run_cli`), or a jsonargparse error (`OneLineErrorParser`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from audit import AuditSettings
from audit.offline import AuditRun, check_audit, run_audit
from audit.settings import check_latency_values, check_report_dir, check_targets
from callbacks import MembershipAttack
from core.errors import ConfigError, check_int, first_line
from core.rundir import (check_run_dir, checkpoint_path, disk_full, disk_full_file, model_dir, plan_paths,
                          read_checkpoint)
from datamodules import MembershipDataModule
from lightning_modules import Classifier
from lightning_modules.privacy import check_trainer

from .console import interactive, quiet_lightning
from .fit import Interrupted, fit_run, fresh_trainer_kwargs, own_callbacks, stop_on_signals, with_atomic_checkpoints
from .memory import check_batch_memory, out_of_memory_line
from .loggers import ConfigToLoggers, make_logger, model_facts_for_logs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "audit")
# Classifier arguments that come from the data module, not from a user.
LINKED = ("num_classes", "input_shape", "normalization", "input_frames")


class AuditTrainer(L.Trainer):
    def audit(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
              latencies: list[int] | None = None, report_dir: str | None = None,
              targets: list[int] | str | None = None, **settings) -> None:
        """Attack finished checkpoints without training: one report row per attack x query x latency.

        Args:
            latencies: SNN inference latencies T' to audit (null: the trained T).
            targets: models audited in turn as the target, the others as their references: all
                (every finished model), a list such as [0, 1, 2], or null (data.model_index, 0 by
                default); the report gives each target's numbers and the mean and 95% interval
                across them.
            report_dir: where report.{md,json} and the plots go (null: run_dir/audit, which the
                training callback also writes); the signal cache stays in run_dir.
            settings: the audit settings (audit.AuditSettings).
        """
        AuditSettings(**settings)  # documents the flags for the parser; run through `python run.py audit`
        raise NotImplementedError("run through `python run.py audit`")


class OneLineErrorParser(LightningArgumentParser):
    """A bad flag or config value (a wrong type, an unknown key) ends in one line,
    `error: <what jsonargparse said>`, and exit status 2, as ConfigError does; not in
    jsonargparse's usage block. `--help` still prints the full usage."""

    MAX_CHARS = 600  # a Union's message lists every alternative; the start names the key

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # parse_config: the caller says which entry or script it was
            raise ConfigError(f"{one_line(message, self.MAX_CHARS)} (see --help)")
        sys.stderr.write(f"error: {one_line(message, self.MAX_CHARS)} (see --help)\n")
        self.exit(2)


def one_line(message, max_chars: int) -> str:
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text[: max_chars - 3] + "..." if len(text) > max_chars else text


def check_references(references) -> dict:
    """--references: model settings that differ for the references (a mapping of Classifier keys)."""
    if references is None:
        return {}
    allowed = set(inspect.signature(Classifier.__init__).parameters) - {"self", *LINKED}
    bad = sorted(set(references) - allowed)
    if bad:
        raise ConfigError(f"references={dict(references)!r}: unknown model key(s) {bad}; allowed: {sorted(allowed)}")
    return dict(references)


# `run.py audit`: the membership plan's settings, as plan.json records them, and the flag of each.
PLAN_FLAGS = {"dataset": "data.dataset", "seed": "data.seed", "num_references": "data.num_references",
              "population": "data.population", "audit_size": "data.audit_size"}


def recorded_plan(run_dir) -> dict | None:
    """The plan.json of `run_dir`, or None when there is none or it cannot be read (loading the
    plan then says what is wrong with it)."""
    if not isinstance(run_dir, str) or not run_dir.strip():
        return None
    try:
        record = json.loads(plan_paths(run_dir)[0].read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and all(k in record for k in PLAN_FLAGS) else None


def plan_flags(recorded: dict) -> list[str]:
    """The flags that give the data module the recorded plan's settings (data.canaries too,
    when the plan has canaries)."""
    flags = [w for key, flag in PLAN_FLAGS.items() for w in (f"--{flag}", shown(recorded[key]))]
    if recorded.get("canaries"):
        flags += ["--data.canaries", json.dumps(recorded["canaries"])]
    return flags


def shown(value) -> str:
    """A value as a flag takes it: null for None."""
    return "null" if value is None else str(value)


def check_plan_flags(cfg, recorded: dict) -> None:
    """A --config file or flag may repeat the recorded plan's settings, not contradict them."""
    for key, flag in PLAN_FLAGS.items():
        given, saved = cfg.data.get(key), recorded[key]
        canaries = recorded.get("canaries") or {}
        set_aside = canaries.get("count", 0) if canaries.get("kind") == "mislabel" else 0
        if key == "audit_size" and given is None and saved == recorded.get("pool_size", 0) - \
                recorded.get("population_size", 0) - set_aside:
            continue  # null is "the rest of the pool", which is what this plan holds
        if given != saved:
            raise ConfigError(f"--{flag} {shown(given)} contradicts the run directory: {cfg.run_dir}/plan.json "
                              f"records {shown(saved)}; run.py audit reads the plan's settings from the run "
                              f"directory, so leave the flag out (or give {shown(saved)})")
    given = cfg.data.get("canaries")
    if given is not None and given != recorded.get("canaries"):
        raise ConfigError(f"--data.canaries {given!r} contradicts the run directory: {cfg.run_dir}/plan.json records "
                          f"{recorded.get('canaries')!r}; run.py audit reads the plan's settings from the run "
                          "directory, so leave the flag out")


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds; numpy wraps larger ones


def check_run_settings(cfg, subcommand: str | None) -> None:
    """Values that only make sense together, checked before anything is built or written."""
    run_dir = cfg.get("run_dir")
    if not isinstance(run_dir, str) or not run_dir.strip():
        raise ConfigError(f"run_dir={run_dir!r} is not allowed; expected a folder path (it is made if missing)")
    check_run_dir(run_dir)
    retrain = cfg.get("retrain")
    if retrain is not None and not isinstance(retrain, bool):
        raise ConfigError(f"retrain={retrain!r} is not allowed; expected true or false")
    if retrain and subcommand not in (None, "fit"):
        raise ConfigError(f"retrain=true is for `run.py fit`, not `run.py {subcommand}`")
    if retrain and cfg.data.model_index is None:
        raise ConfigError("retrain=true needs --data.model_index k, the one model to retrain (its folder is moved "
                          "to run_dir/replaced/; the plan and the other models stay as they are)")
    if cfg.seed_everything is not False and cfg.seed_everything is not True:
        check_int("seed_everything", cfg.seed_everything, 0, SEED_MAX)
    check_int("data.seed", cfg.data.seed, 0, SEED_MAX)
    if cfg.data.model_index is not None:  # before seed_everything + index is used as a seed
        check_int("data.model_index", cfg.data.model_index, 0, cfg.data.num_references if
                  isinstance(cfg.data.num_references, int) else None, what=" (0 = target, 1..K = references) or null")
    epochs = cfg.trainer.get("max_epochs")
    if subcommand in (None, "fit") and epochs is not None and not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigError(f"trainer.max_epochs={epochs!r} is not allowed; expected an integer >= 1 (the audit and "
                          "the report need a last epoch)")
    steps = cfg.trainer.get("max_steps")
    if subcommand in (None, "fit") and steps is not None and steps != -1 and not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"trainer.max_steps={steps!r} is not allowed; expected -1 (no limit) or an integer >= 1")


class AuditCLI(LightningCLI):
    print_tables = True  # the final report's table on stderr (run_cli(print_tables=False): a study's entries)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # predict means nothing here: an audit is what this tool predicts
        base = {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}
        return {**base, "audit": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=str, default="runs/default",
                            help="Run directory: membership plan, one model_<k>/ per model, audit/ reports.")
        parser.add_argument("--retrain", type=bool, default=False,
                            help="fit: train model data.model_index again from scratch; its old folder is moved to "
                                 "run_dir/replaced/ (nothing is deleted; the plan and other models stay).")
        parser.add_argument("--references", type=dict[str, Any] | None, default=None,
                            help="Model settings that differ for the reference models, e.g. {kind: ann}.")
        parser.link_arguments("run_dir", "data.run_dir")
        # Event data are integrated into as many frames as the SNN has time steps.
        parser.link_arguments("model.T", "data.T")
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """Parse `args` (run.py's own argv: LightningCLI's warning about sys.argv beside args does
        not apply). `run.py audit` takes the plan's settings from the run directory; and a
        --ckpt_path is checked before LightningCLI reads its hyper-parameters."""
        args = list(sys.argv[1:] if args is None else args)
        self.config = parser.parse_args(args)
        sub = self.config.get("subcommand")
        if sub == "audit":
            recorded = recorded_plan(self.config[sub].get("run_dir"))
            if recorded is not None:  # the plan's values first: --config files and flags after them may repeat them
                at = args.index("audit") + 1
                self.config = parser.parse_args([*args[:at], *plan_flags(recorded), *args[at:]])
                check_plan_flags(self.config[sub], recorded)
        # LightningCLI reads --ckpt_path's hyper-parameters right after parsing: check the file
        # first (weights only, its recorded hash), so a corrupt or malicious one is one line.
        path = self.config[sub].get("ckpt_path") if sub else None
        if path:
            read_checkpoint(path, label=f"ckpt_path={str(path)!r}")

    @property
    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def _trainer_init(self) -> dict:
        """The instantiated trainer settings (callbacks, plugins) of this subcommand."""
        init = self.config_init.get(self.subcommand, self.config_init) if self.subcommand else self.config_init
        return init.get("trainer") or {}

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg
        check_run_settings(cfg, self.subcommand)
        references = check_references(cfg.references)
        index = cfg.data.model_index or 0
        if index > 0:  # training one reference alone: apply its overrides
            for k, v in references.items():
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
        # fit logs to model_<k>/logs/; test and validate to logs/test/, logs/validate/ (never over training's)
        kwargs["logger"] = make_logger(trainer_cfg.get("logger"), self._cfg.run_dir, index,
                                       stage=None if self.subcommand in (None, "fit") else self.subcommand,
                                       facts=model_facts_for_logs(self.model.hparams, index))
        configured = self._trainer_init().get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        kwargs["callbacks"] = [*configured, *own_callbacks(self._cfg, index)]
        for cb in kwargs["callbacks"]:
            if isinstance(cb, MembershipAttack):
                cb.print_table = self.print_tables
        kwargs["plugins"] = with_atomic_checkpoints(self._trainer_init().get("plugins"))
        return super().instantiate_trainer(**kwargs)

    def fit(self, model, datamodule, ckpt_path=None, **kwargs):
        for cb in self.trainer.callbacks:
            if isinstance(cb, MembershipAttack):
                cb.check()  # a bad audit setting fails now, not after the references trained
                cb.settings.check_inputs(datamodule.input_frames is not None, "MembershipAttack ")
        # DP under DDP and the like are refused before anything is written (the references use this trainer's settings).
        refs_dp = {**model.hparams, **(self._cfg.references or {})}.get("dp")
        for dp in (model.hparams.dp, refs_dp if self._cfg.data.model_index is None else None):
            check_trainer(dp, self.trainer)
        check_batch_memory(model, datamodule, self.trainer.strategy.root_device)  # before the plan is written
        with stop_on_signals():
            fit_run(self.trainer, model, datamodule, self._cfg, ckpt_path)

    def audit(self, model, datamodule, latencies=None, report_dir=None, targets=None, **settings):
        settings = AuditSettings(**settings)
        # Every value is checked before any model is loaded or queried.
        check_audit(self._cfg.run_dir, datamodule.index, settings, latencies, report_dir, targets,
                    datamodule.num_references, datamodule.input_frames)
        settings.check_inputs(datamodule.input_frames is not None)
        if self.trainer.global_rank == 0:
            datamodule.prepare_data()  # the plan: written (or checked) once, read by every rank
        # query bars on a terminal only (in a log file they are megabytes of carriage returns)
        progress = self._cfg.trainer.get("enable_progress_bar") is not False and interactive()
        kwargs = dict(latencies=latencies, report_dir=report_dir, targets=targets, progress=progress,
                      print_table=self.print_tables)
        if self.trainer.world_size == 1:
            datamodule.setup("audit")
            run_audit(datamodule, settings, device=self.trainer.strategy.root_device, **kwargs)
            return
        # Distributed: Lightning launches the ranks at trainer.validate, each queries its
        # shards, rank 0 reports. No loggers, callbacks or checkpoints: the audit writes
        # its report itself.
        trainer_kwargs = fresh_trainer_kwargs(self._cfg.trainer.as_dict())
        trainer_kwargs.update(default_root_dir=str(model_dir(self._cfg.run_dir, datamodule.index)), logger=False,
                              callbacks=[], enable_checkpointing=False, enable_model_summary=False,
                              limit_val_batches=None, fast_dev_run=False)
        trainer = L.Trainer(**trainer_kwargs)
        trainer.validate(AuditRun(datamodule, settings, **kwargs), dataloaders=AuditRun.loader(trainer.world_size),
                         verbose=False)

    def _evaluate(self, fn, model, datamodule, ckpt_path=None, **kwargs):
        if ckpt_path is None:
            last = checkpoint_path(self._cfg.run_dir, self.datamodule.index)
            if not last.exists():
                raise ConfigError(f"run_dir={self._cfg.run_dir!r}: no checkpoint at {last}; "
                                  "train it with `run.py fit` or pass --ckpt_path")
            ckpt_path = str(last)
        # Checked (weights only, hash) before Lightning unpickles it: a corrupt or foreign file is one line.
        read_checkpoint(ckpt_path, label=f"checkpoint {ckpt_path}")
        fn(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def validate(self, model, datamodule, ckpt_path=None, **kwargs):
        self._evaluate(self.trainer.validate, model, datamodule, ckpt_path, **kwargs)

    def test(self, model, datamodule, ckpt_path=None, **kwargs):
        self._evaluate(self.trainer.test, model, datamodule, ckpt_path, **kwargs)


def cli_main(args: list[str] | None = None, run: bool = True, cli_class: type[AuditCLI] = AuditCLI,
             exit_on_error: bool = True) -> AuditCLI:
    per_command = {"parser_mode": "omegaconf", "default_config_files": [str(DEFAULT_CONFIG)],
                   **({} if exit_on_error else {"exit_on_error": False})}
    return cli_class(
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
        parser_kwargs={**{sub: dict(per_command) for sub in SUBCOMMANDS},
                       **({} if exit_on_error else {"exit_on_error": False})} if run else per_command,
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def run_cli(args: list[str], print_tables: bool = True) -> int:
    """One of fit, validate, test, audit: 0 done, 2 a ConfigError (one line on stderr). With
    `print_tables` false, the report's table is written but not printed (a study prints its own)."""
    quiet_lightning()
    try:
        cli_main(args, cli_class=AuditCLI if print_tables else _NoTables)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"error: {stop.line()}", file=sys.stderr)
        return stop.exit_code
    except (OSError, RuntimeError) as err:
        if disk_full(err):  # every file of the run directory is written atomically: nothing half-written stays
            where = disk_full_file(err)
            what = f"writing {where}" if where else first_line(err)
            print(f"error: no space left on the device ({what}); nothing was left half-written: free "
                  "space and rerun the same command to resume", file=sys.stderr)
            return 1
        line = out_of_memory_line(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    return 0


class _NoTables(AuditCLI):
    print_tables = False


class _ParseOnly(AuditCLI):
    """The parser and checks of `run.py fit` (or `run.py audit`), without training or auditing:
    the config is resolved and the model, data module and callbacks are built (which checks
    every value), the trainer is not; for audit, every audit setting is checked as far as it
    can be before the models exist."""

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        for cb in self._trainer_init().get("callbacks") or []:
            if isinstance(cb, MembershipAttack):
                cb.check()

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "audit":
            cfg = self.config_init["audit"]
            settings = AuditSettings(**{k: cfg[k] for k in AUDIT_SETTING_KEYS if k in cfg}).check()
            settings.check_inputs(cfg["data"].input_frames is not None)
            check_latency_values(cfg.get("latencies"))
            check_report_dir(cfg.get("report_dir"), cfg["run_dir"], 0)
            K = cfg["data"].num_references  # every model counts as finished: only the values are checked here
            check_targets(cfg.get("targets"), K, list(range(K + 1)), 0)
        self.subcommand = None  # parsed and checked: nothing runs


AUDIT_SETTING_KEYS = tuple(f.name for f in dataclasses.fields(AuditSettings))


def parse_config(args: list[str], subcommand: str | None = None) -> dict:
    """run.py's configuration for `args` (the flags of `run.py fit`, or of `run.py <subcommand>`),
    resolved by the same parser as that command and checked with the same checks, without
    running anything: a dict with run_dir, data, model, trainer, references, ...
    A bad value, parser errors included, raises ConfigError (one line)."""
    quiet_lightning()
    argv = [subcommand, *args] if subcommand else list(args)
    cli = cli_main(argv, run=subcommand is not None, cli_class=_ParseOnly, exit_on_error=False)
    return (cli.config[subcommand] if subcommand else cli.config).as_dict()
