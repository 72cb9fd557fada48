"""From signals to attack scores and metrics: the glue between the models' signals
(audit/signals.py, audit/cache.py) and the pure math in attacks/; and the one rule for
which models serve as references."""

from __future__ import annotations

import torch

from attacks import FPR_LEVELS, resolution_note, roc_metrics
from core.rundir import finished_models

from .attacks import REGISTRY, Attack, AttackData, default_names

ATTACKS = tuple(default_names())  # the default selection, read off the registry (audit/attacks/)
SUMMARY = ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "tpr@0.01%fpr", "tpr@0%fpr")
LOGGED = ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "tpr@0%fpr")


def setting_name(attack: str, strategy_name: str, latency: int | None = None) -> str:
    """attack[@query][,T<t>]: the plain name for plain queries at the trained latency."""
    parts = [p for p in (None if strategy_name == "plain" else strategy_name,
                         None if latency is None else f"T{latency}") if p]
    return f"{attack}@{','.join(parts)}" if parts else attack


def parse_setting_name(name: str) -> tuple[str, str, int | None]:
    """The inverse of setting_name: (attack, query strategy name, latency or None)."""
    attack, _, rest = name.partition("@")
    parts = [p for p in rest.split(",") if p]
    latency = next((int(p[1:]) for p in parts if p[0] == "T" and p[1:].isdigit()), None)
    strategy = next((p for p in parts if not (p[0] == "T" and p[1:].isdigit())), "plain")
    return attack, strategy, latency


def reference_indices(run_dir, num_references: int, target: int) -> list[int]:
    """The references of target `target`: every other model of the run (0..K) that finished
    training. With the paired plan each audit sample is IN for some of them and OUT for others."""
    return finished_models(run_dir, [k for k in range(num_references + 1) if k != target])


def as_attacks(attacks, **settings) -> list[Attack]:
    """Attack instances: registered names are built with `settings` (their defaults when unset)."""
    return [a if isinstance(a, Attack) else REGISTRY[a](**{k: v for k, v in settings.items()
                                                            if k in REGISTRY[a].settings}) for a in attacks]


NO_REFERENCES = "needs reference models and none has finished training"


def runnable(attacks, ref_in: torch.Tensor | None, refs=(), none_reason: str = NO_REFERENCES
             ) -> tuple[list, dict[str, str]]:
    """The attacks that can run with these references (`ref_in` [K, N], None when none
    finished), and why the others cannot, from each attack's declared `references`: "any"
    needs a reference; "out" an OUT reference for every audit sample (a reference pair that
    is complementary always gives one; two unpaired references, e.g. models 0 and 2 as the
    references of model 1 with K = 2, leave about a quarter of the samples without); "in_out"
    an IN and an OUT reference for every sample. Names in, names out; Attack instances in,
    instances out. `none_reason`: the reason given when there is no reference."""
    has_out = ref_in is not None and bool((~ref_in).any(0).all())
    covered = has_out and bool(ref_in.any(0).all())
    ok, skipped = [], {}
    for item, a in zip(attacks, as_attacks(attacks)):
        n = a.report_name()
        if a.references != "none" and ref_in is None:
            skipped[n] = none_reason
        elif a.references == "in_out" and not covered:
            skipped[n] = f"needs an IN and an OUT reference for every sample; references: {list(refs)}"
        elif a.references == "out" and not has_out:
            missing = int((~(~ref_in).any(0)).sum())
            skipped[n] = f"needs an OUT reference for every sample; {missing} samples have none among references {list(refs)}"
        else:
            ok.append(item)
    return ok, skipped


def score_attacks(attacks, target: dict, references: list[dict], ref_in: torch.Tensor | None, *,
                  extra: dict | None = None, skipped: dict | None = None, strategy: str = "plain",
                  **settings) -> dict[str, torch.Tensor]:
    """Scores [N] per attack (Attack instances, or registered names built with `settings`).
    `target` and each reference are signal dicts of one query strategy ("audit/probability"
    [Q, N], ...); `ref_in` [K, N] the references' membership rows; `extra` what the attacks'
    `prepare` added. An attack whose `unavailable` gives a reason is left out, the reason in
    `skipped` when given."""
    data = AttackData(target, references, ref_in, extra or {}, strategy)
    out: dict[str, torch.Tensor] = {}
    for a in as_attacks(attacks, **settings):
        why = a.unavailable(data)
        if why:
            if skipped is not None:
                skipped[a.report_name()] = why
            continue
        out[a.report_name()] = a.score(data)
    return out


def accuracies(target: dict, is_member: torch.Tensor) -> dict[str, float]:
    """The target's accuracy on its training members and on the population (test),
    read off the first query's `correct` signals: no extra pass over the data."""
    train = float(target["audit/correct"][0][is_member].float().mean())
    test = float(target["population/correct"][0].float().mean())
    return {"train_acc": train, "test_acc": test, "acc_gap": train - test}


def evaluate(attacks, target: dict, references: list[dict], ref_in, is_member: torch.Tensor, **kwargs) -> dict[str, dict]:
    """roc_metrics (with the curve) per attack."""
    attacks = as_attacks(attacks, **{k: v for k, v in kwargs.items() if k not in ("extra", "skipped", "strategy")})
    access = {a.report_name(): a.access for a in attacks}
    scores = score_attacks(attacks, target, references, ref_in, **kwargs)
    return {name: {**roc_metrics(s, is_member), "scores": s, "access": access[name]} for name, s in scores.items()}


def below_resolution(num_nonmembers: int | None) -> dict[str, str]:
    """The TPR-at-FPR metrics that `num_nonmembers` non-members cannot measure, and why: the
    smallest non-zero FPR is 1 / N_out, so TPR at 0.1% FPR with N_out = 808 is TPR at 0% FPR
    under another name. {metric: "N_out = 808 < 1,000"}."""
    if not num_nonmembers:
        return {}
    notes = {key: resolution_note(level, num_nonmembers) for key, level in FPR_LEVELS.items()}
    return {key: note.removeprefix("n/a (").removesuffix(")") for key, note in notes.items() if note}


def summary(metrics: dict, keys=SUMMARY, num_nonmembers: int | None = None) -> dict[str, float | None]:
    """The report's numbers of one attack; a metric below resolution is None (see below_resolution)."""
    na = below_resolution(num_nonmembers)
    return {k: None if k in na else float(metrics[k]) for k in keys if k in metrics}


def distinct_fraction(target: dict) -> float:
    """Distinct target confidences / N: low values mean many ties (coarse SNN outputs)."""
    p = target["audit/probability"].double().mean(0)
    return float(torch.unique(p).numel() / p.numel())
