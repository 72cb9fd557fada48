"""One target's audit on a membership plan: which audit samples, which references, which
attacks can run, scoring a setting, and writing the report. The training callback
(callbacks/membership_attack.py, the live model each epoch) and `run.py audit`
(audit/offline.py, finished checkpoints) both go through `Audit`, so they agree on the
references, the attacks and the report's layout."""

from __future__ import annotations

from pathlib import Path

from lightning_modules import net_name

from .cache import cached_signals_by_latency
from .distributed import Ranks
from .report import print_table, write_report
from .scoring import accuracies, evaluate, reference_indices, runnable
from .settings import AuditSettings
from .signals import subset


def model_facts(hparams) -> dict:
    """kind, arch (model.net's class_path for a network of your own) and T (None for an ANN)
    of a model's hyper-parameters or done.json record."""
    get = hparams.get
    return {"kind": get("kind"), "arch": net_name(hparams), "T": get("T") if get("kind") == "snn" else None}


class Audit:
    """The audit of model `target` of `dm`'s plan with `settings`. Under DDP every rank builds
    it (the references are rank 0's view of which models finished: every rank must query
    the same models)."""

    def __init__(self, dm, target: int, settings: AuditSettings, ranks: Ranks | None = None):
        ranks = ranks or Ranks()
        self.dm, self.target, self.settings = dm, target, settings
        self.positions = dm.subset_positions(settings.audit_subset, settings.subset_seed)
        members = dm.membership[target]
        self.is_member = members if self.positions is None else members[self.positions]
        self.refs: list[int] = ranks.broadcast(reference_indices(dm.run_dir, dm.num_references, target))
        self.unfinished = [k for k in range(dm.num_references + 1) if k != target and k not in self.refs]
        ref_in = dm.membership[self.refs] if self.refs else None
        self.ref_in = ref_in if ref_in is None or self.positions is None else ref_in[:, self.positions]
        self.runnable, self.skipped = runnable(settings.attacks, self.ref_in, self.refs)
        self.num_nonmembers = int((~self.is_member).sum())

    def skip_message(self) -> str | None:
        """Which attacks cannot run and why, or None."""
        if not self.skipped:
            return None
        why = "; ".join(f"{n}: {r}" for n, r in self.skipped.items())
        extra = f" (unfinished references: {self.unfinished})" if self.unfinished else ""
        return f"{len(self.skipped)} attack(s){extra}: {why}"

    def reference_signals(self, strategy, latencies=(None,), *, device=None, progress: bool = False,
                          stats: dict | None = None, ranks: Ranks | None = None) -> dict | None:
        """{latency: [signals of each reference, restricted to the audited samples]}, from the
        signal cache. Every rank must call it (the queries are collective); rank 0 gets the
        signals, the others None."""
        per_ref = [cached_signals_by_latency(self.dm.run_dir, k, self.dm, strategy, latencies,
                                             seed=self.settings.query_seed, device=device, progress=progress,
                                             stats=stats, ranks=ranks) for k in self.refs]
        if ranks is not None and not ranks.is_zero:
            return None
        return {lat: [subset(r[lat], self.positions) for r in per_ref] for lat in latencies}

    def score(self, target: dict, references: list[dict]) -> dict[str, dict]:
        """roc_metrics (with curves) of every runnable attack on one setting's signals."""
        return evaluate(self.runnable, target, references, self.ref_in, self.is_member, **self.settings.score_kwargs)

    def accuracies(self, target: dict) -> dict[str, float]:
        return accuracies(target, self.is_member)

    def write_report(self, out_dir, metrics: dict, *, facts: dict, epoch: int, acc: dict, history: list,
                     extra_target: dict | None = None, extra_settings: dict | None = None,
                     latency: dict | None = None) -> dict:
        """report.json, report.md and the plots in `out_dir`; prints the table. The one
        place where a report is assembled."""
        target = {"epoch": epoch, **facts, **acc, **(extra_target or {})}
        settings = {"plan": self.dm.plan.fingerprint, "target_index": self.target, "references": self.refs,
                    "audit_samples": int(self.is_member.numel()),
                    "population_samples": int(len(self.dm.population_indices)),
                    **self.settings.describe(), **(extra_settings or {})}
        out_dir = Path(out_dir)
        report = write_report(out_dir, metrics, target=target, history=history, skipped=self.skipped,
                              settings=settings, title=f"{facts.get('kind')} {facts.get('arch')}", latency=latency,
                              num_nonmembers=self.num_nonmembers)
        print_table(report, out_dir / "report.md")
        return report


def target_signals_cached(audit: Audit, strategy, latencies, *, device=None, progress: bool = False,
                          stats: dict | None = None, ranks: Ranks | None = None) -> dict | None:
    """The finished target's signals {latency: signals} on the audited samples, from the cache."""
    sig = cached_signals_by_latency(audit.dm.run_dir, audit.target, audit.dm, strategy, latencies,
                                    seed=audit.settings.query_seed, device=device, progress=progress, stats=stats,
                                    ranks=ranks)
    if sig is None:
        return None
    return {lat: subset(s, audit.positions) for lat, s in sig.items()}

