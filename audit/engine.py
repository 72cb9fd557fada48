"""One target's audit on a membership plan: which audit samples, which references, which
attacks can run, scoring a setting, and writing the report. The training callback
(callbacks/membership_attack.py, the live model each epoch) and `run.py audit`
(audit/offline.py, finished checkpoints) both go through `Audit`, so they agree on the
references, the attacks and the report's layout.

`rotate` audits every model of a run in turn as the target, the others as its references
(the paired plan keeps every sample IN for some of them and OUT for others): K + 1 audits
from one training, the way the LiRA and RMIA papers' code evaluates. By default
(`exclude_complement`) a reference model k >= 1 as the target has K - 1 references: not the
model paired with it, whose membership row is the negation of its own (with it, which
references are OUT for a sample would reveal the sample's membership in k)."""

from __future__ import annotations

from pathlib import Path

from datamodules.plan import complement
from lightning_modules import net_name

from .attacks import AttackContext, recorded_levels
from .cache import cached_signals_by_latency
from .distributed import Ranks
from .report import write_report
from .scoring import (NO_REFERENCES, accuracies, evaluate, parse_setting_name, reference_indices, runnable,
                      setting_name)
from .settings import AuditSettings
from .stats import CONFIDENCE, EPS_ASSUMPTIONS, across_targets, attack_summaries
from .signals import subset


def model_facts(hparams) -> dict:
    """kind, arch (model.net's class_path for a network of your own) and T (None for an ANN)
    of a model's hyper-parameters or done.json record."""
    get = hparams.get
    return {"kind": get("kind"), "arch": net_name(hparams), "T": get("T") if get("kind") == "snn" else None}


# What trains references that have not finished, as the line of a skipped attack says it: the
# fit that made the run, rerun with data.model_index null, trains every reference without a
# done.json and then skips the finished target (checked: attack_p alone, then all seven attacks).
TRAIN_REFERENCES = {
    "fit": "to train them, rerun this fit with --data.model_index null (it trains the missing references and "
           "keeps the finished target), then `python run.py audit --run_dir {run_dir}`",
    "audit": "to train them, rerun the fit that made this run with --data.model_index null (it trains the "
             "missing references and keeps the finished target), then this audit",
}


class Audit:
    """The audit of model `target` of `dm`'s plan with `settings`. Under DDP every rank builds
    it (the references are rank 0's view of which models finished: every rank must query
    the same models)."""

    def __init__(self, dm, target: int, settings: AuditSettings, ranks: Ranks | None = None,
                 refs: list[int] | None = None):
        ranks = ranks or Ranks()
        self.dm, self.target, self.settings = dm, target, settings
        self.positions = dm.subset_positions(settings.audit_subset, settings.subset_seed)
        members = dm.membership[target]
        self.is_member = members if self.positions is None else members[self.positions]
        # The references: the models given, or every other model of the run that finished;
        # with exclude_complement, never the model trained on exactly the target's non-members.
        refs = sorted(refs) if refs is not None else \
            ranks.broadcast(reference_indices(dm.run_dir, dm.num_references, target))
        left_out = complement(target) if settings.exclude_complement else None
        self.refs: list[int] = [k for k in refs if k != left_out]
        # The complement when it finished and was left out: a rotation over several targets
        # still needs its signals (it is a reference of every other target).
        self.left_out: list[int] = [k for k in refs if k == left_out]
        self.unfinished = [k for k in range(dm.num_references + 1) if k not in (target, left_out) and k not in self.refs]
        ref_in = dm.membership[self.refs] if self.refs else None
        self.ref_in = ref_in if ref_in is None or self.positions is None else ref_in[:, self.positions]
        self.attacks = settings.attack_objects()
        none = "needs reference models and the run has none (data.num_references 0)" if dm.num_references == 0 \
            else NO_REFERENCES
        self.runnable, self.skipped = runnable(self.attacks, self.ref_in, self.refs, none_reason=none)
        # Only what the selected attacks need is computed: no reference signals when none reads them.
        self.needs_references = any(a.references != "none" for a in self.runnable)
        # The SNN-native levels the selected attacks read, recorded in the signal pass by hooks
        # (attacks/hooks.py) and cached per level; () for the default selection: no hooks.
        self.levels = recorded_levels(self.runnable)
        self.late_skipped: dict[str, str] = {}  # attacks that could not score the latest signals, and why
        self.extra: dict = {}  # what the attacks' `prepare` added (AttackData.extra)
        self.num_nonmembers = int((~self.is_member).sum())

    def skip_message(self, train_them: str | None = None) -> str | None:
        """Which attacks cannot run and why, in one line (attacks grouped by reason), or None.
        With references not trained yet, the line names them and ends with `train_them`, what
        trains them (it depends on the command that audits)."""
        if not self.skipped:
            return None
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.skipped.items():
            by_reason.setdefault(reason, []).append(name)
        runs = [a.report_name() for a in self.runnable]
        why = "; ".join(f"{', '.join(names)} skipped: {'each ' if len(names) > 1 else ''}{reason}"
                        for reason, names in by_reason.items())
        line = f"{why}; {', '.join(runs) or 'no attack'} {'runs' if len(runs) == 1 else 'run'}"
        if self.unfinished:
            missing = ", ".join(f"model_{k}" for k in self.unfinished)
            line = f"references not trained yet: {missing}. {line}" + (f"; {train_them}" if train_them else "")
        return line

    def reference_signals(self, strategy, latencies=(None,), *, device=None, progress: bool = False,
                          stats: dict | None = None, ranks: Ranks | None = None, force: bool = False) -> dict | None:
        """{latency: [signals of each reference, restricted to the audited samples]}, from the
        signal cache; no reference is queried when no selected attack needs references (unless
        `force`: a rotation needs every model's signals). Every rank must call it (the queries
        are collective); rank 0 gets the signals, the others None."""
        refs = self.refs if self.needs_references or force else []
        return self.model_signals(refs, strategy, latencies, device=device, progress=progress, stats=stats,
                                  ranks=ranks)

    def model_signals(self, models: list[int], strategy, latencies=(None,), *, device=None, progress: bool = False,
                      stats: dict | None = None, ranks: Ranks | None = None) -> dict | None:
        """{latency: [signals of each of `models`, restricted to the audited samples]}, from the
        signal cache; collective under DDP as reference_signals."""
        per_ref = [cached_signals_by_latency(self.dm.run_dir, k, self.dm, strategy, latencies,
                                             seed=self.settings.query_seed, device=device, progress=progress,
                                             stats=stats, ranks=ranks, levels=self.levels) for k in models]
        if ranks is not None and not ranks.is_zero:
            return None
        return {lat: [subset(r[lat], self.positions) for r in per_ref] for lat in latencies}

    def score(self, target: dict, references: list[dict], strategy: str = "plain") -> dict[str, dict]:
        """roc_metrics (with curves) of every runnable attack on one setting's signals; an attack
        that cannot score them (its `unavailable`) goes to `late_skipped` with its reason."""
        return evaluate(self.runnable, target, references, self.ref_in, self.is_member, strategy=strategy,
                        extra={**self.extra, "positions": self.positions}, skipped=self.late_skipped)

    def prepare(self, context: AttackContext) -> None:
        """Each runnable attack's work before scoring (an auxiliary model, trajectories), on
        rank 0: what it returns goes to every AttackData of this audit."""
        self.extra = {}
        for a in self.runnable:
            self.extra.update(a.prepare(context))

    def skipped_now(self, metrics: dict) -> dict[str, str]:
        """The report's `skipped`: attacks that could not run, and those that could not score
        the last signals (e.g. a trajectory of one epoch) and have no row."""
        scored = {name.split("@")[0] for name in metrics}
        late = {n: r for n, r in self.late_skipped.items() if n not in scored}
        return {**self.skipped, **late}

    def costs(self, metrics: dict) -> dict[str, dict]:
        """{report row: {"models_trained", "inference_passes"}} of the rows in `metrics`
        (report.json `attack_costs`): each attack's `cost` with the queries of the row's query
        setting and this target's number of references. A row at another latency counts the
        passes at that latency like any other."""
        by_name = {a.report_name(): a for a in self.runnable}
        queries = {s.name: s.num_queries for s in self.settings.strategies}
        out = {}
        for row in metrics:
            attack, strategy, _ = parse_setting_name(row)
            if attack in by_name:
                out[row] = by_name[attack].cost(queries.get(strategy, 1), len(self.refs), self.extra)
        return out

    def details(self) -> dict:
        """{attack: facts} of the attacks that report some (report.json `attack_details`)."""
        return {a.report_name(): d for a in self.runnable if (d := a.details())}

    def accuracies(self, target: dict) -> dict[str, float]:
        return accuracies(target, self.is_member)

    def summaries(self, metrics: dict, intervals: bool = True) -> tuple[dict, dict]:
        """This target's numbers per attack setting (with 95% intervals and eps_lb) and the
        eps_lb records (audit.stats)."""
        return attack_summaries(metrics, self.is_member, self.settings, intervals=intervals,
                                num_nonmembers=self.num_nonmembers)

    def write_report(self, out_dir, metrics: dict, *, facts: dict, epoch: int, acc: dict, history: list,
                     extra_target: dict | None = None, extra_settings: dict | None = None,
                     latency: dict | None = None, targets: dict | None = None,
                     canary_audit: dict | None = None) -> dict:
        """report.json, report.md and the plots in `out_dir` (the caller prints the table). The one
        place where a report is assembled. `targets` ({model: {"attacks", accuracies}}), from
        `rotate`, adds every target's numbers and the mean and interval across them.
        `canary_audit` (audit/canaries.py) is the black-box canary audit of the main target."""
        attacks, eps = self.summaries(metrics)
        target = {"epoch": epoch, **facts, **acc, **(extra_target or {})}
        settings = {"plan": self.dm.plan.fingerprint, "target_index": self.target, "references": self.refs,
                    "audit_samples": int(self.is_member.numel()),
                    "population_samples": int(len(self.dm.population_indices)),
                    **self.settings.describe(), **(extra_settings or {})}
        extra = {"eps_lb": {"confidence": CONFIDENCE, "delta": self.settings.eps_delta,
                            "assumptions": EPS_ASSUMPTIONS, "attacks": eps}} if eps else {}
        if self.details():
            extra["attack_details"] = self.details()
        extra["attack_costs"] = self.costs(metrics)
        if targets:
            per_target = {m: t["attacks"] for m, t in targets.items()}
            extra["targets"] = {str(m): t for m, t in targets.items()}
            extra["across_targets"] = across_targets(per_target)
        if canary_audit:
            extra["canary_audit"] = canary_audit
        dp = target.get("dp")
        canary_above = {"canary_audit": canary_audit["eps_lb"]} if canary_audit else {}
        if dp and dp.get("audit_canaries"):
            canary_above["white-box gradient canaries"] = dp["audit_canaries"]["eps_lb"]
        if dp and dp.get("epsilon") is not None and (eps or canary_above):
            above = {n: e["eps_lb"] for n, e in eps.items() if e["eps_lb"] > dp["epsilon"] + 1e-9}
            above.update({n: v for n, v in canary_above.items() if v > dp["epsilon"] + 1e-9})
            if above:  # impossible for a correct DP implementation whose assumptions hold
                extra["warnings"] = [f"eps_lb above the accountant's epsilon {dp['epsilon']:.4g} for "
                                     + ", ".join(f"{n} ({v:.4g})" for n, v in above.items())
                                     + ": a bug in the DP training, or a broken assumption (scope: "
                                     + f"{dp.get('scope', 'all training')})"]
        out_dir = Path(out_dir)
        report = write_report(out_dir, metrics, attacks=attacks, target=target, history=history,
                              skipped=self.skipped_now(metrics), settings=settings, title=f"{facts.get('kind')} {facts.get('arch')}",
                              latency=latency, num_nonmembers=self.num_nonmembers, extra=extra)
        return report


def rotate(dm, settings: AuditSettings, signals: dict[int, dict[str, dict]], models: list[int],
           targets: list[int], latency: int | None = None, context=None) -> dict[int, dict]:
    """Every model of `targets` audited as the target, the other `models` as its references,
    from signals already computed ({model: {strategy name: signals on the audited samples}}):
    {model: {"attacks": {setting: numbers with intervals and eps_lb}, "train_acc", "test_acc",
    "acc_gap", "references", "attack_costs" (Audit.costs)}, plus "skipped" ({attack: why})
    when an attack could not score and "attack_details" when an attack reports facts}.
    Rotation adds only attack math: no model is queried again. `context(m, refs)`, when given, is target m's AttackContext: the
    attacks that prepare something (QMIA's regression model, the trajectories) prepare it
    for each target; without it they have no row for a rotated target, and say why."""
    out = {}
    for m in targets:
        audit = Audit(dm, m, settings, refs=[k for k in models if k != m])
        if context is not None:
            audit.prepare(context(m, audit.refs))
        metrics, acc = {}, None
        for s in settings.strategies:
            target = signals[m][s.name]
            refs = [signals[k][s.name] for k in audit.refs]
            if acc is None:
                acc = audit.accuracies(target)
            metrics.update({setting_name(n, s.name, latency): v for n, v in audit.score(target, refs, s.name).items()})
        attacks, _ = audit.summaries(metrics)
        out[m] = {**acc, "references": audit.refs, "attacks": attacks}
        skipped = {n: r for n, r in audit.skipped_now(metrics).items() if n not in audit.skipped}
        if skipped:  # the run-wide skips are the report's own `skipped`; these are this target's
            out[m]["skipped"] = skipped
        if audit.details():
            out[m]["attack_details"] = audit.details()
        out[m]["attack_costs"] = audit.costs(metrics)
    return out


def target_signals_cached(audit: Audit, strategy, latencies, *, device=None, progress: bool = False,
                          stats: dict | None = None, ranks: Ranks | None = None) -> dict | None:
    """The finished target's signals {latency: signals} on the audited samples, from the cache."""
    sig = cached_signals_by_latency(audit.dm.run_dir, audit.target, audit.dm, strategy, latencies,
                                    seed=audit.settings.query_seed, device=device, progress=progress, stats=stats,
                                    ranks=ranks, levels=audit.levels)
    if sig is None:
        return None
    return {lat: subset(s, audit.positions) for lat, s in sig.items()}

