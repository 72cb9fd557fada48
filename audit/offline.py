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
each t (audit/cache.py); a Poisson-encoded one runs once per latency. Report rows are
`<attack>[@<query>],T<t>` for t != the trained T, the plain name at the trained T. With
two or more latencies, report.json gets `latency`: {attack setting: {t, auc,
tpr@0.1%fpr}} and audit/latency.png plots both against t."""

from __future__ import annotations

import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

from core.rundir import audit_dir, checkpoint_path, read_checkpoint, read_done

from .distributed import Ranks
from .engine import Audit, model_facts, target_signals_cached
from .report import LATENCY_METRICS
from .scoring import below_resolution, distinct_fraction, setting_name
from .settings import AuditSettings, check_latencies, check_report_dir


def check_audit(run_dir, target_index: int, settings: AuditSettings, latencies=None, report_dir=None) -> dict:
    """Every audit setting, checked against the finished target before any model is loaded
    or queried (ConfigError naming the key): {"done", "trained_T", "latencies", "report_dir"}."""
    settings.check()
    done = read_done(run_dir, target_index)
    trained_T = model_facts(done)["T"]
    return {"done": done, "trained_T": trained_T,
            "latencies": check_latencies(latencies, trained_T, target_index, done.get("step_readout", True)),
            "report_dir": check_report_dir(report_dir, run_dir, target_index)}


def training_history(run_dir, index: int) -> list:
    """The MembershipAttack history saved in model `index`'s checkpoint ([] if none)."""
    try:
        _, _, ckpt = read_checkpoint(checkpoint_path(run_dir, index))
    except ValueError:
        return []
    return list(ckpt.get("callbacks", {}).get("MembershipAttack", {}).get("history", []))


def run_audit(dm, settings: AuditSettings, *, latencies=None, report_dir=None, device=None, progress: bool = True,
              ranks: Ranks | None = None) -> dict | None:
    """The audit of model dm.index; returns the report. Under DDP (`ranks` sharded) every rank
    calls it with the same settings; rank 0 writes and returns the report, the others None."""
    ranks = ranks or Ranks()
    run_dir, target_index = dm.run_dir, dm.index
    checked = check_audit(run_dir, target_index, settings, latencies, report_dir)
    done, trained_T = checked["done"], checked["trained_T"]
    audit = Audit(dm, target_index, settings, ranks)
    if audit.skipped and ranks.is_zero:
        print(f"audit skips {audit.skip_message()}", file=sys.stderr)

    # Per strategy, each model's signals at every latency at once: a direct-encoded SNN is
    # run once, at the largest missing latency, and read out after each t steps.
    lats = list(dict.fromkeys(checked["latencies"] or [None]))
    strategies = settings.strategies
    signals, stats = {}, {}
    for s in strategies:
        kwargs = dict(device=device, progress=progress, stats=stats, ranks=ranks)
        target = target_signals_cached(audit, s, lats, **kwargs)
        references = audit.reference_signals(s, lats, **kwargs)  # every rank, same order: collective queries
        if ranks.is_zero:
            signals[s.name] = (target, references)
    if not ranks.is_zero:
        return None
    metrics, acc, series, distinct = {}, None, {}, {}
    for latency in lats:  # report rows latency-major, as one run per latency listed them
        shown = None if latency in (None, trained_T) else latency
        for s in strategies:
            target, references = signals[s.name][0][latency], signals[s.name][1][latency]
            # Few distinct confidences = many ties (a low-latency SNN's coarse outputs):
            # where averaging over query masks helps, this is why.
            distinct[setting_name("", s.name, shown).lstrip("@") or "plain"] = distinct_fraction(target)
            if acc is None or (s.name == "plain" and shown is None):
                acc = audit.accuracies(target)
            result = audit.score(target, references)
            metrics.update({setting_name(n, s.name, shown): m for n, m in result.items()})
            t = trained_T if latency is None else latency
            for n, m in result.items():
                series.setdefault(setting_name(n, s.name), []).append((t, m))
    latency_series = {}
    if len({trained_T if lat is None else lat for lat in lats}) >= 2:
        for name, points in series.items():
            points.sort(key=lambda p: p[0])
            latency_series[name] = {"t": [t for t, _ in points],
                                    **{k: [float(m[k]) for _, m in points] for k in LATENCY_METRICS
                                       if k not in below_resolution(audit.num_nonmembers)}}
    out = checked["report_dir"] or audit_dir(run_dir)
    return audit.write_report(out, metrics, facts=model_facts(done), epoch=done.get("epochs", 0) - 1, acc=acc,
                              history=training_history(run_dir, target_index),
                              extra_target={"distinct_confidences": distinct, "dp": done.get("dp")},
                              extra_settings={"latencies": list(checked["latencies"] or []), "signal_cache": stats},
                              latency=latency_series or None)


class AuditRun(L.LightningModule):
    """`run_audit` on every rank of a distributed trainer, as its validation epoch end:

        trainer.validate(AuditRun(dm, settings, ...), dataloaders=AuditRun.loader(trainer.world_size), verbose=False)

    `trainer.validate` is what makes Lightning launch the ranks (`ddp` re-runs the command,
    `ddp_spawn` spawns, SLURM / torchrun start them) and join the process group; the one
    placeholder batch per rank only gets the loop to its end. Rank 0 must have written the
    plan (`dm.prepare_data()`) before: the other ranks read it after a barrier."""

    def __init__(self, datamodule, settings: AuditSettings, **audit_kwargs):
        super().__init__()
        self.dm = datamodule
        self.settings = settings
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
            self.report = run_audit(self.dm, self.settings, device=self.trainer.strategy.root_device, ranks=ranks,
                                    **self.audit_kwargs)

