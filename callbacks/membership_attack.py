"""MembershipAttack: audit the model being trained at the end of validation epochs.

Per audited epoch and query strategy it does one pass of the model over the audit
set and one over the population (Q queries each), takes the reference models'
signals from the cache (computed once per reference checkpoint and strategy),
scores every configured attack and logs, against the epoch:

    attack/<name>/auc, attack/<name>/tpr@1%fpr, attack/<name>/tpr@0.1%fpr, attack/<name>/tpr@0%fpr,
    audit/train_acc, audit/test_acc, audit/acc_gap

(<name> carries "@<strategy>" for a non-plain query, e.g. rmia_offline@dropout_p0.01_n10).
At the end of fit it writes run_dir/audit/report.{json,md} and roc.png, prints the
table, and logs the ROC curves to W&B when a WandbLogger is attached.

Under DDP (trainer.world_size > 1) every rank queries its shard of the audit set and
of the population (DistributedSampler); rank 0 gathers the shards, keeps each sample
exactly once (the sampler pads by repeating samples), runs the attack math, writes the
signal caches and the report, and broadcasts the epoch's numbers, which every rank then
logs alike (no collective inside logging; metrics can be monitored on any rank).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from attacks import parse_query
from datamodules.errors import ConfigError, check_int

from .cache import Ranks, cached_signals, compute_signals, finished_models, subset
from .report import table, write_report
from .scoring import ATTACKS, LOGGED, accuracies, check_attacks, evaluate, runnable, summary


def setting_name(attack: str, strategy_name: str, latency: int | None = None) -> str:
    parts = [p for p in (None if strategy_name == "plain" else strategy_name,
                         None if latency is None else f"T{latency}") if p]
    return f"{attack}@{','.join(parts)}" if parts else attack


class MembershipAttack(L.Callback):
    def __init__(
        self,
        queries: list[str] = ["plain"],
        attacks: list[str] = list(ATTACKS),
        every_n_epochs: int = 1,
        audit_subset: int | None = None,
        subset_seed: int = 0,
        query_seed: int = 0,
        rmia_offline_a: float = 0.3,
        rmia_gamma: float = 1.0,
        rmia_per_query: bool = False,
        lira_fix_variance: bool | None = None,
        progress: bool = True,
        report: bool = True,
    ):
        """
        Args:
            queries: query strategies: plain, flip, dropout:p=0.01,n=10[,per_timestep=true].
            attacks: any of attack_p, attack_r, rmia_offline, rmia_online, lira_online,
                lira_offline, reference_ratio (default: all).
            every_n_epochs: audit every n-th epoch (the last epoch is always audited).
            audit_subset: audit a fixed random subset of this many audit samples (null: all).
            subset_seed: seed of that subset.
            query_seed: seed of the input-dropout masks (the same for every model).
            rmia_offline_a: a of offline RMIA; rmia_gamma: its gamma;
            rmia_per_query: score each query and average the scores (else average signals).
            lira_fix_variance: one global sigma (null: on when fewer than 128 references).
            progress: progress bars for the query passes.
            report: write run_dir/audit/ at the end of fit.
        """
        super().__init__()
        # Checked in setup(), not here: jsonargparse instantiates callbacks while it
        # validates the config and would bury our one-line error in a page of its own.
        self._args = dict(queries=list(queries), attacks=list(attacks), every_n_epochs=every_n_epochs,
                          audit_subset=audit_subset, rmia_offline_a=rmia_offline_a, rmia_gamma=rmia_gamma)
        self.every_n_epochs = every_n_epochs
        self.audit_subset = audit_subset
        self.subset_seed = subset_seed
        self.query_seed = query_seed
        self.score_kwargs = dict(rmia_offline_a=rmia_offline_a, rmia_gamma=rmia_gamma, rmia_per_query=rmia_per_query,
                                 lira_fix_variance=lira_fix_variance)
        self.progress = progress
        self.report = report
        self.history: list[dict] = []
        self.last_metrics: dict | None = None
        self.cache_stats: dict[str, int] = {}
        self._ready = False
        self._bars = progress

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.check()

    def check(self) -> None:
        """Validate the settings (ConfigError naming the key); run.py calls it before any training."""
        a = self._args
        try:
            self.strategies = [parse_query(q) for q in a["queries"]]
        except ValueError as err:
            raise ConfigError(f"MembershipAttack queries={a['queries']!r}: {err}") from None
        self.attacks = check_attacks(a["attacks"])
        check_int("MembershipAttack every_n_epochs", a["every_n_epochs"], 1)
        if a["audit_subset"] is not None:
            check_int("MembershipAttack audit_subset", a["audit_subset"], 2)
        if not 0.0 <= a["rmia_offline_a"] <= 1.0:
            raise ConfigError(f"MembershipAttack rmia_offline_a={a['rmia_offline_a']!r} is not allowed; expected a number in [0, 1]")
        if not a["rmia_gamma"] > 0:
            raise ConfigError(f"MembershipAttack rmia_gamma={a['rmia_gamma']!r} is not allowed; expected a number > 0")

    # -- preparation ----------------------------------------------------------------------
    def _active(self, trainer) -> bool:
        dm = trainer.datamodule
        return getattr(dm, "run_dir", None) is not None and getattr(dm, "index", None) == 0

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if not hasattr(dm, "membership"):
            raise ConfigError("MembershipAttack needs the MembershipDataModule (data: MembershipDataModule)")
        if not self._active(trainer):
            return  # references are trained plainly; only the target (model 0) is audited
        # Query bars follow Lightning's: none when its progress bar is off (logs, CI).
        self._bars = self.progress and trainer.progress_bar_callback is not None
        self._prepare(dm, pl_module, Ranks.of(trainer))  # every rank: reference signals are queried sharded

    def _prepare(self, dm, pl_module, ranks: Ranks | None = None) -> None:
        ranks = ranks or Ranks()
        self.positions = dm.subset_positions(self.audit_subset, self.subset_seed)
        self.is_member = dm.membership[0] if self.positions is None else dm.membership[0][self.positions]
        # Rank 0's view of which references finished: every rank must query the same models.
        self.refs = ranks.broadcast(finished_models(dm.run_dir, range(1, dm.num_references + 1)))
        missing = sorted(set(range(1, dm.num_references + 1)) - set(self.refs))
        self.ref_in = dm.membership[self.refs] if self.refs else None
        if self.ref_in is not None and self.positions is not None:
            self.ref_in = self.ref_in[:, self.positions]
        self.runnable, skipped = runnable(self.attacks, self.ref_in, self.refs)
        self.skipped = skipped
        if skipped:
            why = "; ".join(f"{n}: {r}" for n, r in skipped.items())
            extra = f" (unfinished references: {missing})" if missing else ""
            rank_zero_warn(f"MembershipAttack skips {len(skipped)} attack(s){extra}: {why}")
        self.ref_signals: dict[str, list[dict]] = {}
        for s in self.strategies:
            sigs = []
            for k in self.refs:
                sig = cached_signals(dm.run_dir, k, dm, s, seed=self.query_seed, device=pl_module.device,
                                     progress=self._bars, stats=self.cache_stats, ranks=ranks)
                sigs.append(subset(sig, self.positions))
            self.ref_signals[s.name] = sigs
        self._ready = True

    # -- per epoch ------------------------------------------------------------------------
    def _due(self, trainer) -> bool:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 1 >= trainer.max_epochs
        return (epoch + 1) % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._active(trainer) or not self._due(trainer):
            return
        ranks = Ranks.of(trainer)  # every rank takes part: each queries its shard, rank 0 scores
        if not self._ready:
            self._prepare(trainer.datamodule, pl_module, ranks)
        entry, metrics = self.audit(trainer.datamodule, pl_module, ranks)
        entry = ranks.broadcast(entry)  # rank 0's numbers, for every rank's history and logs
        entry = {"epoch": trainer.current_epoch, **entry}
        self.history = [h for h in self.history if h["epoch"] != entry["epoch"]] + [entry]
        self.last_metrics = metrics  # with the ROC curves: rank 0 only (None elsewhere)
        logged = {f"audit/{k}": entry[k] for k in ("train_acc", "test_acc", "acc_gap")}
        for name, m in entry["attacks"].items():
            logged.update({f"attack/{name}/{k}": float(m[k]) for k in LOGGED})
        # Every rank logs rank 0's values (loggers write from rank 0 only); the sync is a max over
        # equal values, exact, and keeps Lightning from asking for sync_dist on every key.
        pl_module.log_dict(logged, on_epoch=True, sync_dist=ranks.sharded, reduce_fx="max")

    def audit(self, dm, model, ranks: Ranks | None = None) -> tuple[dict | None, dict | None]:
        """One audit of `model` (the live target): (history entry, metrics with curves).
        Under DDP every rank must call it; the other ranks than 0 get (None, None)."""
        ranks = ranks or Ranks()
        metrics, acc = {}, None
        for s in self.strategies:
            target = compute_signals(model, dm, s, seed=self.query_seed, device=model.device, progress=self._bars,
                                     audit_positions=self.positions, ranks=ranks)
            if target is None:  # a rank other than 0: its shard is gathered on rank 0
                continue
            if acc is None:
                acc = accuracies(target, self.is_member)
            result = evaluate(self.runnable, target, self.ref_signals[s.name], self.ref_in, self.is_member,
                              **self.score_kwargs)
            metrics.update({setting_name(n, s.name): m for n, m in result.items()})
        if not ranks.is_zero:
            return None, None
        entry = {**acc, "attacks": {n: summary(m) for n, m in metrics.items()}}
        return entry, metrics

    # -- end of fit -----------------------------------------------------------------------
    def on_fit_end(self, trainer, pl_module) -> None:
        if not (self._active(trainer) and trainer.is_global_zero and self.last_metrics and self.report):
            return
        dm = trainer.datamodule
        last = self.history[-1]
        hp = pl_module.hparams
        target = {"epoch": last["epoch"], "kind": hp.get("kind"), "arch": hp.get("arch"),
                  "T": hp.get("T") if hp.get("kind") == "snn" else None,
                  **{k: last[k] for k in ("train_acc", "test_acc", "acc_gap")}}
        settings = {"plan": dm.plan.fingerprint, "references": self.refs, "queries": [s.name for s in self.strategies],
                    "audit_samples": int(self.is_member.numel()), "population_samples": int(len(dm.population_indices)),
                    "query_seed": self.query_seed, **{k: v for k, v in self.score_kwargs.items()}}
        report = write_report(Path(dm.run_dir) / "audit", self.last_metrics, target=target, history=self.history,
                              skipped=self.skipped, settings=settings, title=f"{target['kind']} {target['arch']}")
        print("\n" + table(report) + f"\nreport: {Path(dm.run_dir) / 'audit' / 'report.md'}", file=sys.stderr)
        log_roc_to_wandb(trainer, report)

    # -- resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


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
