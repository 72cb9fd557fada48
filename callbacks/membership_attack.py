"""MembershipAttack: audit the model being trained at the end of validation epochs.

Per audited epoch and query strategy it does one pass of the model over the audit
set and one over the population (Q queries each), takes the reference models'
signals from the cache (computed once per reference checkpoint and strategy),
scores every configured attack and logs, against the epoch:

    attack/<name>/auc, attack/<name>/tpr@1%fpr, attack/<name>/tpr@0.1%fpr, attack/<name>/tpr@0%fpr,
    audit/train_acc, audit/test_acc, audit/acc_gap, and with data.canaries audit/canary_eps_lb
    (that epoch's canary bound; only the final one, the report's canary_audit, is the 95% bound:
    audit/canaries.py)

(<name> carries "@<strategy>" for a non-plain query, e.g. rmia_offline@dropout_p0.01_n10).
At the end of fit it writes run_dir/audit/report.{json,md} and roc.png, prints the
table, and logs the ROC curves to W&B when a WandbLogger is attached.

Under DDP (trainer.world_size > 1) every rank queries its shard of the audit set and
of the population; rank 0 gathers the shards, keeps each sample exactly once, runs the
attack math, writes the signal caches and the report, and broadcasts the epoch's
numbers, which every rank then logs alike (no collective inside logging).

The audit itself is audit.Audit; the settings are audit.AuditSettings.
"""

from __future__ import annotations

import sys

import lightning as L

from attacks import eps_lower_bound
from audit import LOGGED, Audit, AuditSettings, model_facts
from audit.canaries import canary_audit, canary_delta, canary_scores, dp_facts_with_canaries
from audit.attacks import AttackContext
from audit.cache import cached_signals, store_signals
from audit.engine import TRAIN_REFERENCES, rotate
from audit.distributed import Ranks
from audit.report import table_text
from audit.scoring import setting_name
from audit.signals import compute_signals
from audit.trajectory import finish, record
from core.errors import ConfigError, check_int
from core.faults import kill_point
from core.rundir import audit_dir, done_path, report_paths

from .trajectory import TrajectoryRecorder


class MembershipAttack(L.Callback):
    def __init__(self, every_n_epochs: int = 1, progress: bool = True, report: bool = True, rotate: bool = True,
                 **settings):
        """
        Args:
            every_n_epochs: audit every n-th epoch (the last epoch is always audited).
            progress: progress bars for the query passes.
            report: write run_dir/audit/ at the end of fit.
            rotate: at the end of fit, audit every model of the run in turn as the target (the
                others, except its complement, as its references) and report the mean and 95%
                interval across them; only when the references share the target's settings (no
                --references override).
            settings: the audit settings (audit.AuditSettings): queries, attacks, query_seed,
                audit_subset, subset_seed, bootstrap, eps_delta, exclude_complement (true by default: a
                rotated target k >= 1 does not get its complement as a reference), and every
                registered attack's settings (audit/attacks/).
        """
        super().__init__()
        # Checked in check() (run.py calls it before any training) and in setup(), not
        # here: jsonargparse instantiates callbacks while it validates the config and would
        # bury our one-line error in a page of its own.
        self.settings = AuditSettings(**settings)
        self.every_n_epochs = every_n_epochs
        self.progress = progress
        self.report = report
        self.rotate = rotate
        # run.py prints the final report's table on stderr; a study's in-process runs do not
        # (the study prints its own). Set by whoever runs the fit, not a config value.
        self.print_table = True
        self.same_references = True  # fit sets it: False with --references overrides (no rotation)
        self.last_target_signals: dict[str, dict] = {}
        self.history: list[dict] = []
        self.last_metrics: dict | None = None
        self.last_canary_audit: dict | None = None  # the black-box canary audit of the last audited epoch
        self.cache_stats: dict[str, int] = {}
        self.max_epochs: int | None = None
        self.audit: Audit | None = None
        self._audited_this_fit = False
        self._bars = progress

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.check()

    def check(self) -> None:
        """Validate the settings (ConfigError naming the key)."""
        self.settings.check("MembershipAttack ")
        check_int("MembershipAttack every_n_epochs", self.every_n_epochs, 1)

    def check_data(self, dm) -> None:
        """Settings that depend on the plan, checked before any model trains: an audit subset
        must hold enough members and non-members of the target, and with `rotate` of every
        model the end of fit audits as a target."""
        plan = dm.planned()  # nothing is written before this check
        positions = dm.subset_positions(self.settings.audit_subset, self.settings.subset_seed, plan)
        targets = range(plan.membership.shape[0]) if self.rotate and self.same_references else [0]
        self.settings.check_subset(plan.membership, positions, targets, "MembershipAttack ")

    def owed_files(self, trainer) -> list:
        """What the target owes before it counts as finished: the report and its plot."""
        if not self._active(trainer):
            return []
        return self.owed_by(trainer.datamodule.run_dir, trainer.datamodule.index)

    def owed_by(self, run_dir, index: int) -> list:
        """The files model `index` of `run_dir` owes (a rerun re-verifies them): the target's report set."""
        if not (self.report and run_dir is not None and index == 0):
            return []
        return list(report_paths(run_dir).values())

    # -- preparation ----------------------------------------------------------------------
    def _active(self, trainer) -> bool:
        """Only the target (model 0) is audited; references are trained plainly."""
        dm = trainer.datamodule
        return getattr(dm, "run_dir", None) is not None and getattr(dm, "index", None) == 0

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if not hasattr(dm, "membership"):
            raise ConfigError("MembershipAttack needs the MembershipDataModule (data: MembershipDataModule)")
        if not self._active(trainer):
            return
        self._audited_this_fit = False
        # Query bars follow the epoch progress: none when it is off, or writes to a log file.
        bar = trainer.progress_bar_callback
        self._bars = self.progress and bar is not None and getattr(bar, "interactive", True)
        self._prepare(dm, pl_module, Ranks.of(trainer))  # every rank: reference signals are queried sharded
        define_epoch_axis(trainer)

    def _prepare(self, dm, pl_module, ranks: Ranks | None = None) -> None:
        self.audit = Audit(dm, 0, self.settings, ranks)
        if self.audit.skipped and (ranks or Ranks()).is_zero:  # one line per fit, not a warning per attack
            train = TRAIN_REFERENCES["fit"].format(run_dir=dm.run_dir)
            print(f"MembershipAttack: {self.audit.skip_message(train_them=train)}", file=sys.stderr, flush=True)
        self.ref_signals = {}
        for s in self.settings.strategies:
            signals = self.audit.reference_signals(s, device=pl_module.device, progress=self._bars,
                                                   stats=self.cache_stats, ranks=ranks,
                                                   force=self.rotate and self.same_references)
            self.ref_signals[s.name] = None if signals is None else signals[None]  # None: a rank other than 0

    # -- per epoch ------------------------------------------------------------------------
    @staticmethod
    def _last(trainer) -> bool:
        return trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs

    def _due(self, trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or self._last(trainer)

    @property
    def records_trajectory(self) -> bool:
        """Whether a selected attack reads trajectories (then every model records its own)."""
        return any(a.needs("trajectory") for a in self.settings.attack_objects())

    def reference_callbacks(self) -> list:
        """Callbacks the references' trainers need for the selected attacks."""
        return [TrajectoryRecorder()] if self.records_trajectory else []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        dm = trainer.datamodule
        if not self._active(trainer) and getattr(dm, "index", 0) and self.records_trajectory:
            # a reference trained on its own (data.model_index k): it records its trajectory
            record(dm, dm.index, trainer.current_epoch, model=pl_module, ranks=Ranks.of(trainer))
        if not self._active(trainer) or not self._due(trainer):
            return
        ranks = Ranks.of(trainer)  # every rank takes part: each queries its shard, rank 0 scores
        if self.audit is None:
            self._prepare(trainer.datamodule, pl_module, ranks)
        self.max_epochs = trainer.max_epochs
        entry, metrics = self.audit_epoch(trainer.datamodule, pl_module, ranks, final=self._last(trainer))
        entry = ranks.broadcast(entry)  # rank 0's numbers, for every rank's history and logs
        entry = {"epoch": trainer.current_epoch, **entry}
        if getattr(pl_module, "private", None) is not None:  # DP-SGD: epsilon spent up to this audit
            entry["dp_epsilon"] = pl_module.private.epsilon()
        self.history = [h for h in self.history if h["epoch"] != entry["epoch"]] + [entry]
        self.last_metrics = metrics  # with the ROC curves: rank 0 only (None elsewhere)
        self._audited_this_fit = True
        logged = {f"audit/{k}": entry[k] for k in ("train_acc", "test_acc", "acc_gap", "canary_eps_lb") if k in entry}
        for name, m in entry["attacks"].items():  # a metric below resolution (None) is not logged as a number
            logged.update({f"attack/{name}/{k}": float(m[k]) for k in (*LOGGED, "eps_lb") if m.get(k) is not None})
        # Every rank logs rank 0's values (loggers write from rank 0 only); the sync is a max over
        # equal values, exact, and keeps Lightning from asking for sync_dist on every key.
        pl_module.log_dict(logged, on_epoch=True, sync_dist=ranks.sharded, reduce_fx="max")

    def audit_epoch(self, dm, model, ranks: Ranks | None = None, final: bool = True,
                    cached: dict | None = None) -> tuple[dict | None, dict | None]:
        """One audit of `model` (the live target): (history entry, metrics with curves).
        Under DDP every rank must call it; the other ranks than 0 get (None, None). `final`:
        the last audit of this fit (an attack with an auxiliary model trains it then).
        `cached`: the target's signals per strategy name, read from the cache (no query)."""
        ranks = ranks or Ranks()
        metrics, acc, signals = {}, None, {}
        for s in self.settings.strategies:
            if cached is not None:
                target = cached[s.name]
            else:
                target = compute_signals(model, dm, s, seed=self.settings.query_seed, device=model.device,
                                         progress=self._bars, audit_positions=self.audit.positions, ranks=ranks,
                                         levels=self.audit.levels)
            kill_point(f"audit:model_{dm.index}:epoch_{model.current_epoch}")  # kill tests only (every rank)
            if target is None:  # a rank other than 0: its shard is gathered on rank 0
                continue
            if acc is None:
                acc = self.audit.accuracies(target)
            self.last_target_signals[s.name] = signals[s.name] = target
        if self.records_trajectory:  # the target's trajectory, from this pass when it has the plain queries
            # (the same decision on every rank: a pass of its own is collective under DDP)
            reuse = self.audit.positions is None and "plain" in [s.name for s in self.settings.strategies]
            if not reuse:
                record(dm, dm.index, model.current_epoch, model=model, ranks=ranks)
            elif ranks.is_zero:
                record(dm, dm.index, model.current_epoch, signals=signals["plain"])
        if ranks.is_zero:
            self.audit.late_skipped.clear()
            self.audit.prepare(AttackContext(dm, 0, dict(model.hparams), signals, epochs=self.max_epochs or 1,
                                             device=model.device, epoch=model.current_epoch, final=final,
                                             references=self.audit.refs))
        for name, target in signals.items():
            result = self.audit.score(target, self.ref_signals[name], name)
            metrics.update({setting_name(n, name): m for n, m in result.items()})
        if not ranks.is_zero:
            return None, None
        # Per epoch, the point estimates and eps_lb (intervals only in the final report).
        attacks, _ = self.audit.summaries(metrics, intervals=False)
        for name, m in metrics.items():
            attacks[name]["eps_lb"] = float(eps_lower_bound(m["scores"], self.audit.is_member,
                                                            delta=self.settings.eps_delta)["eps_lb"])
        entry = {**acc, "attacks": attacks}
        scores = canary_scores(model, dm)
        if scores is not None:  # data.canaries: the black-box canary audit of this epoch's model
            self.last_canary_audit = canary_audit(dm, scores, canary_delta(model, self.settings))
            entry["canary_eps_lb"] = self.last_canary_audit["eps_lb"]
        return entry, metrics

    # -- end of fit -----------------------------------------------------------------------
    def on_fit_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if self.records_trajectory and trainer.is_global_zero and getattr(dm, "run_dir", None) is not None:
            finish(dm, dm.index)  # the recorded epochs belong to this final checkpoint
        if not (self._active(trainer) and self.report and self.history):
            return
        ranks = Ranks.of(trainer)
        if not self._audited_this_fit:
            # A rerun after a kill between the last epoch and the report: training is complete,
            # so no epoch runs; the last checkpoint holds the weights of the last audited
            # epoch, and auditing them again gives that epoch's metrics, bit for bit.
            # A finished target whose report was lost: its signals come from the cache (the
            # entry written with the report, checked against its checkpoint), not a new query.
            if self.audit is None:
                self._prepare(trainer.datamodule, pl_module, ranks)
            self.max_epochs = trainer.max_epochs
            cached = self._cached_target_signals(trainer.datamodule, pl_module, ranks)
            _, self.last_metrics = self.audit_epoch(trainer.datamodule, pl_module, ranks, final=True, cached=cached)
        if not trainer.is_global_zero:
            return
        dm, last = trainer.datamodule, self.history[-1]
        self._cache_target_signals(dm, pl_module)
        targets = None
        if self.rotate and self.same_references and self.audit.refs:
            # Every model in turn as the target: from signals already in memory, no query.
            models = [0, *self.audit.refs]
            signals = {0: self.last_target_signals}
            for i, k in enumerate(self.audit.refs):
                signals[k] = {name: refs[i] for name, refs in self.ref_signals.items()}
            targets = rotate(dm, self.settings, signals, models, models)
        report = self.audit.write_report(
            audit_dir(dm.run_dir), self.last_metrics, facts=model_facts(pl_module.hparams),
            epoch=last["epoch"], acc={k: last[k] for k in ("train_acc", "test_acc", "acc_gap")},
            history=self.history, extra_target={"dp": dp_facts_with_canaries(pl_module),
                                                "precision": str(trainer.precision)},
            targets=targets, canary_audit=self.last_canary_audit)
        if self.print_table:
            print(table_text(report, audit_dir(dm.run_dir) / "report.md"), file=sys.stderr)
        log_roc_to_wandb(trainer, report)

    def _cached_target_signals(self, dm, pl_module, ranks: Ranks) -> dict | None:
        """The finished target's signals per strategy from its signal cache, or None (not
        finished, an audit_subset, several processes): then the target is queried again."""
        if self.audit.positions is not None or ranks.sharded or not done_path(dm.run_dir, 0).is_file():
            return None
        return {s.name: cached_signals(dm.run_dir, 0, dm, s, seed=self.settings.query_seed,
                                       T=getattr(pl_module, "T", None), device=pl_module.device,
                                       levels=self.audit.levels)
                for s in self.settings.strategies}

    def _cache_target_signals(self, dm, pl_module) -> None:
        """The target's final signals go to the signal cache like any model's, so that a later
        `run.py audit` with the same query settings does not query it again (not with an
        audit_subset: the cache holds the whole audit set)."""
        if self.audit.positions is not None:
            return
        for s in self.settings.strategies:
            store_signals(dm.run_dir, 0, dm, s, getattr(pl_module, "T", None), self.settings.query_seed,
                          self.last_target_signals[s.name], str(pl_module.trainer.precision), self.audit.levels)

    # -- resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


def define_epoch_axis(trainer) -> None:
    """W&B charts of the audit against the epoch, not Lightning's global step."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            run.define_metric("epoch")
            for prefix in ("attack/*", "audit/*", "dp/*"):
                run.define_metric(prefix, step_metric="epoch")


def log_roc_to_wandb(trainer, report: dict) -> None:
    """Final ROC curves as a W&B table and line plot (curves already <= ~1,000 points)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        rows = [[name, f, t] for name, c in report["curves"].items() for f, t in zip(c["fpr"], c["tpr"])]
        roc = wandb.Table(columns=["attack", "fpr", "tpr"], data=rows)
        logger.experiment.log({"audit/roc": wandb.plot.line(roc, "fpr", "tpr", stroke="attack", title="ROC"),
                               "audit/roc_table": roc})
        for name, m in report["attacks"].items():
            for k, v in m.items():
                logger.experiment.summary[f"final/{name}/{k}"] = v
