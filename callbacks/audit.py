"""`run.py audit`: attack finished checkpoints without training, over a grid of query
strategies and (for SNNs) inference latencies T', with one report row per setting.

Under DDP (`--trainer.devices N --trainer.strategy ddp`, several nodes) `run.py audit`
runs `run_audit` on every rank inside `trainer.validate` of `AuditRun`, so that
Lightning launches and connects the ranks: each rank queries its shard of every
missing (model, query, latency) signal set, rank 0 merges them (each sample once),
writes the caches, runs the attack math and writes the report. Same numbers as one
process, to float tolerance (a batch's composition can move a float by an ulp).

Latencies (`--latencies '[1, 2, 4]'`): a direct-encoded SNN is run once per model and
query strategy, at the largest latency not yet cached, and read out after t steps for
each t (`cache.cached_signals_by_latency`); a Poisson-encoded one runs once per latency.
Report rows are `<attack>[@<query>],T<t>` for t != the trained T, the plain name at the
trained T. With two or more latencies, report.json gets `latency`: {attack setting:
{t, auc, tpr@0.1%fpr}} and audit/latency.png plots both against t."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from attacks import parse_query
from datamodules.errors import ConfigError

from .cache import Ranks, cached_signals_by_latency, checkpoint_path, finished_models, read_done, subset
from .membership_attack import setting_name
from .report import LATENCY_METRICS, table, write_report
from .scoring import accuracies, check_attacks, distinct_fraction, evaluate, runnable, summary


def _history_from_checkpoint(run_dir, index: int) -> list:
    try:
        ckpt = torch.load(checkpoint_path(run_dir, index), map_location="cpu", weights_only=True)
        return list(ckpt.get("callbacks", {}).get("MembershipAttack", {}).get("history", []))
    except Exception:
        return []


def check_audit(run_dir, target_index: int, *, queries=("plain",), latencies=None, attacks=None,
                report_dir=None, **_) -> tuple:
    """Validate the audit settings against the finished target (ConfigError naming the key):
    (query strategies, attack names, the target's done.json, its trained T or None)."""
    from .scoring import ATTACKS

    try:
        strategies = [parse_query(q) for q in queries]
    except ValueError as err:
        raise ConfigError(f"queries={list(queries)!r}: {err}") from None
    names = check_attacks(attacks or ATTACKS)
    done = read_done(run_dir, target_index)
    trained_T = done.get("T") if done.get("kind") == "snn" else None
    if latencies and trained_T is None:
        raise ConfigError(f"latencies={list(latencies)!r}: model {target_index} is an ANN; latencies apply to SNNs only")
    for t in latencies or []:
        if not (isinstance(t, int) and t >= 1):
            raise ConfigError(f"latencies={list(latencies)!r} is not allowed; expected integers >= 1")
    if report_dir is not None:
        rd = Path(report_dir)
        if rd.exists() and not rd.is_dir():
            raise ConfigError(f"report_dir={str(report_dir)!r} is a file; expected a folder (made if missing)")
        if rd.resolve() in (Path(run_dir).resolve(), (Path(run_dir) / f"model_{target_index}").resolve()):
            raise ConfigError(f"report_dir={str(report_dir)!r} would mix the report with the run's own files; "
                              f"expected a folder of its own, e.g. {Path(run_dir) / 'audit_latency'}")
    return strategies, names, done, trained_T


def run_audit(dm, *, queries=("plain",), latencies=None, attacks=None, query_seed: int = 0,
              audit_subset: int | None = None, subset_seed: int = 0, device=None, progress: bool = True,
              ranks: Ranks | None = None, report_dir=None, **score_kwargs) -> dict | None:
    """The audit; returns the report. Under DDP (`ranks` sharded) every rank calls it with
    the same settings; rank 0 writes and returns the report, the other ranks return None."""
    ranks = ranks or Ranks()
    run_dir = dm.run_dir
    target_index = dm.index
    strategies, names, done, trained_T = check_audit(run_dir, target_index, queries=queries, latencies=latencies,
                                                     attacks=attacks, report_dir=report_dir)
    positions = dm.subset_positions(audit_subset, subset_seed)
    members = dm.membership[target_index]
    is_member = members if positions is None else members[positions]
    candidates = [k for k in range(1, dm.num_references + 1) if k != target_index]
    refs = ranks.broadcast(finished_models(run_dir, candidates))  # every rank queries the same models
    ref_in = dm.membership[refs] if refs else None
    if ref_in is not None and positions is not None:
        ref_in = ref_in[:, positions]
    ok, skipped = runnable(names, ref_in, refs)
    if skipped and ranks.is_zero:
        print("audit skips: " + "; ".join(f"{n} ({r})" for n, r in skipped.items()), file=sys.stderr)

    # Per strategy, each model's signals at every latency at once: a direct-encoded SNN is
    # run once, at the largest missing latency, and read out after each t steps.
    lats = list(dict.fromkeys(latencies or [None]))
    results, stats = {}, {}
    for s in strategies:
        sig = lambda k: cached_signals_by_latency(run_dir, k, dm, s, lats, seed=query_seed, device=device,
                                                  progress=progress, stats=stats, ranks=ranks)
        target = sig(target_index)
        references = [sig(k) for k in refs]  # every rank, same order: the queries are collective
        if not ranks.is_zero:
            continue
        for latency in lats:
            t_target = subset(target[latency], positions)
            t_refs = [subset(r[latency], positions) for r in references]
            results[latency, s.name] = (t_target, evaluate(ok, t_target, t_refs, ref_in, is_member, **score_kwargs))
    if not ranks.is_zero:
        return None
    metrics, acc, series, distinct = {}, None, {}, {}
    for latency in lats:  # report rows latency-major, as one run per latency listed them
        shown = None if latency in (None, trained_T) else latency
        for s in strategies:
            target, result = results[latency, s.name]
            # Few distinct confidences = many ties (a low-latency SNN's coarse outputs):
            # where averaging over query masks helps, this is why.
            distinct[setting_name("", s.name, shown).lstrip("@") or "plain"] = distinct_fraction(target)
            if acc is None or (s.name == "plain" and shown is None):
                acc = accuracies(target, is_member)
            metrics.update({setting_name(n, s.name, shown): m for n, m in result.items()})
            t = trained_T if latency is None else latency
            for n, m in result.items():
                series.setdefault(setting_name(n, s.name), []).append((t, m))
    latency_series = {}
    if len({trained_T if lat is None else lat for lat in lats}) >= 2:
        for name, points in series.items():
            points.sort(key=lambda p: p[0])
            latency_series[name] = {"t": [t for t, _ in points],
                                    **{k: [float(m[k]) for _, m in points] for k in LATENCY_METRICS}}
    target_info = {"epoch": done.get("epochs", 0) - 1, "kind": done.get("kind"), "arch": done.get("arch"),
                   "T": trained_T, **acc, "distinct_confidences": distinct}
    settings = {"plan": dm.plan.fingerprint, "references": refs, "queries": [s.name for s in strategies],
                "latencies": list(latencies or []), "audit_samples": int(is_member.numel()),
                "population_samples": int(len(dm.population_indices)), "query_seed": query_seed,
                "signal_cache": stats, **score_kwargs}
    out = Path(report_dir) if report_dir else Path(run_dir) / "audit"
    report = write_report(out, metrics, target=target_info,
                          history=_history_from_checkpoint(run_dir, target_index), skipped=skipped,
                          settings=settings, title=f"{done.get('kind')} {done.get('arch')}",
                          latency=latency_series or None)
    print("\n" + table(report) + f"\nreport: {out / 'report.md'}", file=sys.stderr)
    return report


class AuditRun(L.LightningModule):
    """`run_audit` on every rank of a distributed trainer, as its validation epoch end:

        trainer.validate(AuditRun(dm, queries=...), dataloaders=AuditRun.loader(trainer.world_size), verbose=False)

    `trainer.validate` is what makes Lightning launch the ranks (`ddp` re-runs the command,
    `ddp_spawn` spawns, SLURM / torchrun start them) and join the process group; the one
    placeholder batch per rank only gets the loop to its end. Rank 0 must have written the
    plan (`dm.prepare_data()`) before: the other ranks read it after a barrier."""

    def __init__(self, datamodule, **audit_kwargs):
        super().__init__()
        self.dm = datamodule
        self.audit_kwargs = audit_kwargs
        self.report: dict | None = None

    @staticmethod
    def loader(world_size: int) -> DataLoader:
        return DataLoader(list(range(max(1, int(world_size)))), batch_size=1)

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self) -> None:
        ranks = Ranks.of(self.trainer)
        ranks.barrier()  # rank 0 wrote the plan before validate: now every rank reads it
        self.dm.setup("audit")
        # As in one process: no inference mode (tensors made here outlive the loop), no autocast.
        with torch.inference_mode(False), torch.enable_grad():
            self.report = run_audit(self.dm, device=self.trainer.strategy.root_device, ranks=ranks,
                                    **self.audit_kwargs)
