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
tpr@0.1%fpr}} and audit/latency.png plots both against t; with several targets (`--targets`)
each setting also gets `across_targets`, the mean over the targets and its 95% interval at
every t, and latency.png plots those with error bars."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from core.errors import ConfigError
from core.rundir import audit_dir, checkpoint_path, finished_models, read_checkpoint, read_done

from .attacks import AttackContext
from .distributed import Ranks
from .canaries import checkpoint_canary_audit
from .engine import TRAIN_REFERENCES, Audit, model_facts, rotate, target_signals_cached
from .report import LATENCY_METRICS, table_text
from .scoring import below_resolution, distinct_fraction, setting_name
from .settings import AuditSettings, check_latencies, check_report_dir, check_targets
from .stats import across_targets


def check_audit(run_dir, target_index: int, settings: AuditSettings, latencies=None, report_dir=None,
                targets=None, num_references: int | None = None, input_frames: int | None = None) -> dict:
    """Every audit setting, checked against the finished target before any model is loaded
    or queried (ConfigError naming the key): {"done", "trained_T", "latencies", "report_dir",
    "targets"} (targets[0] is the report's main target)."""
    settings.check()
    if targets is not None:
        K = num_references if num_references is not None else target_index
        targets = check_targets(targets, K, finished_models(run_dir, range(K + 1)), target_index)
        target_index = targets[0]
    done = read_done(run_dir, target_index)
    trained_T = model_facts(done)["T"]
    trained_frames = (done.get("hparams") or {}).get("input_frames")
    if input_frames is not None and trained_frames is not None and input_frames != trained_frames:
        raise ConfigError(f"model.T={input_frames!r}: the event data would hold {input_frames} frames per sample, but "
                          f"model {target_index} was trained on {trained_frames}; run it with --model.T "
                          f"{trained_frames} (latencies read fewer steps: --latencies)")
    return {"done": done, "trained_T": trained_T,
            "latencies": check_latencies(latencies, trained_T, target_index, done.get("step_readout", True)),
            "report_dir": check_report_dir(report_dir, run_dir, target_index), "targets": targets or [target_index]}


def training_history(run_dir, index: int) -> list:
    """The MembershipAttack history saved in model `index`'s checkpoint ([] if none)."""
    try:
        _, _, ckpt = read_checkpoint(checkpoint_path(run_dir, index))
    except ValueError:
        return []
    return list(ckpt.get("callbacks", {}).get("MembershipAttack", {}).get("history", []))


def run_audit(dm, settings: AuditSettings, *, latencies=None, report_dir=None, targets=None, device=None,
              progress: bool = True, ranks: Ranks | None = None, print_table: bool = True) -> dict | None:
    """The audit of model dm.index, or of each model of `targets` in turn ("all" or a list; the
    first is the report's main target); returns the report, and prints its table on stderr
    unless `print_table` is false. Under DDP (`ranks` sharded) every rank calls it with the same
    settings; rank 0 writes and returns the report, the others None."""
    ranks = ranks or Ranks()
    run_dir = dm.run_dir
    checked = check_audit(run_dir, dm.index, settings, latencies, report_dir, targets, dm.num_references)
    done, trained_T, target_index = checked["done"], checked["trained_T"], checked["targets"][0]
    settings.check_subset(dm.membership, dm.subset_positions(settings.audit_subset, settings.subset_seed),
                          checked["targets"])
    audit = Audit(dm, target_index, settings, ranks)
    if audit.skipped and ranks.is_zero:
        print(f"audit: {audit.skip_message(train_them=TRAIN_REFERENCES['audit'])}", file=sys.stderr)

    # Per strategy, each model's signals at every latency at once: a direct-encoded SNN is
    # run once, at the largest missing latency, and read out after each t steps.
    lats = list(dict.fromkeys(checked["latencies"] or [None]))
    strategies = settings.strategies
    # With several targets, the main target's complement (left out of its own references) is
    # a reference of every other target: its signals are needed too.
    extra = audit.left_out if len(checked["targets"]) > 1 else []
    signals, stats = {}, {}
    for s in strategies:
        kwargs = dict(device=device, progress=progress, stats=stats, ranks=ranks)
        target = target_signals_cached(audit, s, lats, **kwargs)
        references = audit.reference_signals(s, lats, force=len(checked["targets"]) > 1,
                                             **kwargs)  # every rank, same order: collective queries
        others = audit.model_signals(extra, s, lats, **kwargs) if extra else None
        if ranks.is_zero:
            signals[s.name] = (target, references, others)
    if not ranks.is_zero:
        return None
    hparams = done.get("hparams") or {}
    audit.prepare(AttackContext(dm, target_index, hparams, {n: sig[0][lats[0]] for n, sig in signals.items()},
                                epochs=int(done.get("epochs") or hparams.get("max_epochs") or 1),
                                checkpoint_sha256=done.get("checkpoint_sha256"), device=device, final=True,
                                references=audit.refs))
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
            result = audit.score(target, references, s.name)
            metrics.update({setting_name(n, s.name, shown): m for n, m in result.items()})
            t = trained_T if latency is None else latency
            for n, m in result.items():
                series.setdefault(setting_name(n, s.name), []).append((t, m, setting_name(n, s.name, shown)))
    latency_series = {}
    if len({trained_T if lat is None else lat for lat in lats}) >= 2:
        for name, points in series.items():
            points.sort(key=lambda p: p[0])
            latency_series[name] = {"t": [t for t, _, _ in points],
                                    **{k: [float(m[k]) for _, m, _ in points] for k in LATENCY_METRICS
                                       if k not in below_resolution(audit.num_nonmembers)}}
    rotated = None
    if len(checked["targets"]) > 1:  # every listed model in turn as the target, from the signals above
        models, rotated = [target_index, *audit.refs, *extra], {}
        signals_of = {target_index: {n: sig[0][lats[0]] for n, sig in signals.items()}}
        for i, k in enumerate(audit.refs):
            signals_of[k] = {n: sig[1][lats[0]][i] for n, sig in signals.items()}
        for i, k in enumerate(extra):
            signals_of[k] = {n: sig[2][lats[0]][i] for n, sig in signals.items()}

        def context(m: int, refs: list[int]) -> AttackContext:
            """Target m's context, as the main target's above: its own done.json and signals."""
            done_m = read_done(run_dir, m)
            hp = done_m.get("hparams") or {}
            return AttackContext(dm, m, hp, signals_of[m], epochs=int(done_m.get("epochs") or hp.get("max_epochs") or 1),
                                 checkpoint_sha256=done_m.get("checkpoint_sha256"), device=device, final=True,
                                 references=refs)
        for latency in lats:
            by_model = {target_index: {name: sig[0][latency] for name, sig in signals.items()}}
            for i, k in enumerate(audit.refs):
                by_model[k] = {name: sig[1][latency][i] for name, sig in signals.items()}
            for i, k in enumerate(extra):
                by_model[k] = {name: sig[2][latency][i] for name, sig in signals.items()}
            shown = None if latency in (None, trained_T) else latency
            for m, result in rotate(dm, settings, by_model, models, checked["targets"], shown, context).items():
                if m not in rotated:
                    rotated[m] = result
                else:
                    rotated[m]["attacks"].update(result["attacks"])
    if latency_series and rotated:
        add_across_targets(latency_series, series, rotated)
    out = checked["report_dir"] or audit_dir(run_dir)
    canaries = checkpoint_canary_audit(dm, run_dir, done, settings, device) if target_index == 0 else None
    report = audit.write_report(out, metrics, facts=model_facts(done), epoch=done.get("epochs", 0) - 1, acc=acc,
                              history=training_history(run_dir, target_index),
                              extra_target={"distinct_confidences": distinct, "dp": done.get("dp"),
                                            "precision": done.get("precision")},
                              extra_settings={"latencies": list(checked["latencies"] or []), "signal_cache": stats},
                              latency=latency_series or None, targets=rotated, canary_audit=canaries)
    if print_table:
        print(table_text(report, Path(out) / "report.md"), file=sys.stderr)
    return report


def add_across_targets(latency_series: dict, points: dict, rotated: dict) -> None:
    """With several targets, each latency series also gets, per t, the mean over the targets and
    its 95% t-interval (audit.stats.across_targets, the numbers of report.md's "Across the
    targets" table): series["across_targets"] = {"n", metric: {"mean": [...], "ci": [[lo, hi] or
    None, ...]}}. `points` maps each series to its (t, metrics, report setting) triples, sorted by t."""
    across = across_targets({m: r["attacks"] for m, r in rotated.items()})
    for name, v in latency_series.items():
        rows = [across.get(key, {}) for _, _, key in points[name]]
        keys = [k for k in LATENCY_METRICS if k in v and all(k in row for row in rows)]
        if keys:
            v["across_targets"] = {"n": min(row[k]["n"] for row in rows for k in keys),
                                   **{k: {"mean": [row[k]["mean"] for row in rows], "ci": [row[k]["ci"] for row in rows]}
                                      for k in keys}}


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

