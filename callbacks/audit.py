"""`run.py audit`: attack finished checkpoints without training, over a grid of query
strategies and (for SNNs) inference latencies T', with one report row per setting."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from attacks import parse_query
from datamodules.errors import ConfigError

from .cache import cached_signals, checkpoint_path, finished_models, read_done, subset
from .membership_attack import setting_name
from .report import table, write_report
from .scoring import accuracies, check_attacks, evaluate, runnable, summary


def _history_from_checkpoint(run_dir, index: int) -> list:
    try:
        ckpt = torch.load(checkpoint_path(run_dir, index), map_location="cpu", weights_only=True)
        return list(ckpt.get("callbacks", {}).get("MembershipAttack", {}).get("history", []))
    except Exception:
        return []


def run_audit(dm, *, queries=("plain",), latencies=None, attacks=None, query_seed: int = 0,
              audit_subset: int | None = None, subset_seed: int = 0, device=None, progress: bool = True,
              **score_kwargs) -> dict:
    from .scoring import ATTACKS

    run_dir = dm.run_dir
    try:
        strategies = [parse_query(q) for q in queries]
    except ValueError as err:
        raise ConfigError(f"queries={list(queries)!r}: {err}") from None
    names = check_attacks(attacks or ATTACKS)
    target_index = dm.index
    done = read_done(run_dir, target_index)
    trained_T = done.get("T") if done.get("kind") == "snn" else None
    if latencies and trained_T is None:
        raise ConfigError(f"latencies={list(latencies)!r}: model {target_index} is an ANN; latencies apply to SNNs only")
    for t in latencies or []:
        if not (isinstance(t, int) and t >= 1):
            raise ConfigError(f"latencies={list(latencies)!r} is not allowed; expected integers >= 1")
    positions = dm.subset_positions(audit_subset, subset_seed)
    members = dm.membership[target_index]
    is_member = members if positions is None else members[positions]
    candidates = [k for k in range(1, dm.num_references + 1) if k != target_index]
    refs = finished_models(run_dir, candidates)
    ref_in = dm.membership[refs] if refs else None
    if ref_in is not None and positions is not None:
        ref_in = ref_in[:, positions]
    ok, skipped = runnable(names, len(refs))
    if ref_in is not None and not (ref_in.any(0).all() and (~ref_in).any(0).all()):
        for n in ("rmia_online", "lira_online"):
            if n in ok:
                ok.remove(n)
                skipped[n] = f"needs IN and OUT references for every sample; finished references: {refs}"
    if skipped:
        print("audit skips: " + "; ".join(f"{n} ({r})" for n, r in skipped.items()), file=sys.stderr)

    metrics, acc, stats = {}, None, {}
    for latency in latencies or [None]:
        shown = None if latency in (None, trained_T) else latency
        for s in strategies:
            sig = lambda k: subset(cached_signals(run_dir, k, dm, s, seed=query_seed, T=latency, device=device,
                                                  progress=progress, stats=stats), positions)
            target = sig(target_index)
            if acc is None or (s.name == "plain" and shown is None):
                acc = accuracies(target, is_member)
            result = evaluate(ok, target, [sig(k) for k in refs], ref_in, is_member, **score_kwargs)
            metrics.update({setting_name(n, s.name, shown): m for n, m in result.items()})
    target_info = {"epoch": done.get("epochs", 0) - 1, "kind": done.get("kind"), "arch": done.get("arch"),
                   "T": trained_T, **acc}
    settings = {"plan": dm.plan.fingerprint, "references": refs, "queries": [s.name for s in strategies],
                "latencies": list(latencies or []), "audit_samples": int(is_member.numel()),
                "population_samples": int(len(dm.population_indices)), "query_seed": query_seed,
                "signal_cache": stats, **score_kwargs}
    report = write_report(Path(run_dir) / "audit", metrics, target=target_info,
                          history=_history_from_checkpoint(run_dir, target_index), skipped=skipped,
                          settings=settings, title=f"{done.get('kind')} {done.get('arch')}")
    print("\n" + table(report) + f"\nreport: {Path(run_dir) / 'audit' / 'report.md'}", file=sys.stderr)
    return report
