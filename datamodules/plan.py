"""The membership plan (docs/design.md, "The membership plan"): which audit sample is in
which model's training set, drawn once and persisted with a fingerprint.

Layout on disk (inside the run directory):
  plan.json  fingerprint + sizes, human-readable, and `content_sha256`, the hash of the
             tensors, checked every time the plan is loaded
  plan.pt    tensors only (membership, audit_indices, population_indices, and with
             data.canaries the canary_* tensors of datamodules/canaries.py), read with
             torch.load(weights_only=True) so a shared plan cannot run code.

Canaries (`data.canaries`) add `canaries: {count, kind}` to the fingerprint and their tensors
(labels, inclusion bits, pool positions or images) to plan.pt, under the same hash; a plan
without canaries is exactly what it was before they existed.

A plan is never rewritten: a plan.pt without its plan.json, or trained models without a
plan, is an error, not a reason to draw a new one.

A dataset read from a user's folder (imagefolder, the event datasets) adds its identity to
the fingerprint under `dataset_identity` (datamodules/identity.py): a folder that changed
since the plan was drawn is refused with a line saying what changed.

PLAN_VERSION changes only when the same settings would draw a different plan. The
identity does not change how a plan is drawn, and the built-in datasets have none, so
their fingerprints (and the checkpoints and signal caches that record them) are exactly
those written before it existed: an existing run directory loads and matches as before.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import ConfigError, first_line
from core.rundir import (PlanLock, atomic_write, check_num_references, plan_paths, tensors_sha256,
                          trained_model_dirs)

from .canaries import Canaries, check_canaries, draw_canaries
from .identity import describe_difference

PLAN_VERSION = 1


@dataclass
class Plan:
    membership: torch.Tensor  # bool [1 + K, N]; row 0 = target, rows 2i-1 / 2i complementary
    audit_indices: torch.Tensor  # int64 [N], positions in the data pool
    population_indices: torch.Tensor  # int64 [Z], positions in the data pool, in no training set
    fingerprint: dict
    canaries: Canaries | None = None  # data.canaries: only the target trains on (its included) canaries


# The smallest sizes an audit may have. docs/limits.md gives the tables and the command that
# measured them (benchmarks/small_audit_coverage.py, 2,000 simulated audits per size):
# - the audit set: for an attack with no signal the 95% AUC interval excluded 0.5 in 31% of
#   audits at N = 4, 9.7% at 10, 8.7% at 20, and 6.4% to 5.3% from 40 to 400. 50 (25
#   members, 25 non-members) is the round number past that knee.
# - an unbalanced audit (a random audit_subset) is as good as its smaller class: 20 members
#   and 20 non-members gave 6.0%, 20 and 180 6.2%, 10 and 190 7.1%.
# - the population: the target's test accuracy is measured on it. On 50 samples the measured
#   value missed a true accuracy of 0.5 by more than 0.1 in 12.7% of draws, on 100 in 3.4%.
#   RMIA's ranking hardly depends on it (docs/limits.md).
MIN_AUDIT_SIZE = 50
MIN_PER_CLASS = 20
MIN_POPULATION = 100
WHY_AUDIT = (f"below {MIN_AUDIT_SIZE} audit samples, the AUC's 95% interval of an attack with no signal wrongly "
             "rules out 0.5 ever more often than the 5% it promises (in 31% of audits of 4, 9.7% of 10, 8.7% of 20, "
             "6.2% of 50); see docs/limits.md")
WHY_PER_CLASS = ("the AUC's interval is as good as the smaller of the two (20 of each: 6.0% of audits with no signal "
                 "wrongly rule out 0.5, 10 and 10: 8.7%); see docs/limits.md")
WHY_POPULATION = ("the target's test accuracy is measured on it, and on 50 samples it missed a true 0.5 by more than "
                  "0.1 in 12.7% of draws, on 100 in 3.4%; see docs/limits.md")


def resolve_population(population: float | int | None, pool_size: int) -> int:
    """None: about 1,000 samples where the pool allows, else 10% of it, but never fewer than
    MIN_POPULATION."""
    if population is None:
        z = 1000 if pool_size >= 10_000 else max(MIN_POPULATION, round(0.1 * pool_size))
    elif isinstance(population, float) and 0.0 < population < 1.0:
        z = round(population * pool_size)
    elif isinstance(population, float) and population >= 1 and population.is_integer():
        z = int(population)  # 1000.0 from a YAML or CLI parser that read a float: a count
    elif isinstance(population, int) and not isinstance(population, bool) and population >= 1:
        z = population
    else:
        raise ConfigError(
            f"data.population={population!r} is not allowed; use a fraction in (0, 1), a count >= {MIN_POPULATION}, "
            "or null for the default"
        )
    if z < MIN_POPULATION:
        gives = "" if z == population else f" gives {z} samples, which"
        raise ConfigError(f"data.population={population!r}{gives} is below the minimum of {MIN_POPULATION}: "
                          f"{WHY_POPULATION}")
    if z > pool_size - 2:
        raise ConfigError(f"data.population={population!r} gives {z} samples; the pool has {pool_size}, so at most "
                          f"{pool_size - 2}")
    return z


def make_plan(dataset: str, pool_size: int, num_references: int, seed: int,
              population: float | int | None = None, audit_size: int | None = None,
              dataset_identity: dict | None = None, canaries: dict | None = None,
              pool_labels: torch.Tensor | None = None, num_classes: int | None = None,
              sample: torch.Tensor | None = None) -> Plan:
    """The plan of these settings. With `canaries` ({count, kind}), `pool_labels`, `num_classes`
    and `sample` (one pool item: the shape and dtype of a noise canary) are needed too."""
    check_num_references(num_references)
    if pool_size < MIN_POPULATION + MIN_AUDIT_SIZE:
        raise ConfigError(f"the pool of {pool_size} samples is too small to audit: it needs at least "
                          f"{MIN_POPULATION + MIN_AUDIT_SIZE}, a population of {MIN_POPULATION} (the target's test "
                          f"accuracy) and an audit set of {MIN_AUDIT_SIZE} (the AUC's interval); see docs/limits.md")
    z = resolve_population(population, pool_size)
    canaries = check_canaries(canaries)
    # mislabel canaries are pool images set aside: in neither the population nor the audit set
    reserved = canaries["count"] if canaries and canaries["kind"] == "mislabel" else 0
    if reserved and reserved > pool_size - z - MIN_AUDIT_SIZE:
        raise ConfigError(f"data.canaries.count={reserved!r} is not allowed with kind=mislabel: the pool has {pool_size} "
                          f"samples, {z} of them the population and at least {MIN_AUDIT_SIZE} the audit set, so at "
                          f"most {pool_size - z - MIN_AUDIT_SIZE} can be canaries")
    n_max = pool_size - z - reserved
    n = n_max if audit_size is None else audit_size
    if n_max < MIN_AUDIT_SIZE:
        raise ConfigError(f"the pool of {pool_size} samples leaves {n_max} for the audit after the population of {z} "
                          f"(data.population={population!r}), below the minimum of {MIN_AUDIT_SIZE}; use a smaller "
                          f"data.population or more data (at least {MIN_POPULATION + MIN_AUDIT_SIZE + reserved} "
                          f"samples): {WHY_AUDIT}")
    if not (isinstance(n, int) and not isinstance(n, bool) and MIN_AUDIT_SIZE <= n <= n_max):
        if not isinstance(n, int) or isinstance(n, bool):
            why = ""
        elif n < MIN_AUDIT_SIZE:
            why = f": {WHY_AUDIT}"
        else:
            why = f": the pool of {pool_size} samples holds {n_max} after the population of {z}"
        raise ConfigError(f"data.audit_size={audit_size!r} is not allowed; expected null or an integer in "
                          f"[{MIN_AUDIT_SIZE}, {n_max}]{why}")

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(pool_size, generator=g)
    population_indices = perm[:z].sort().values
    audit_indices = perm[z : z + n].sort().values

    def random_half() -> torch.Tensor:
        row = torch.zeros(n, dtype=torch.bool)
        row[torch.randperm(n, generator=g)[: n // 2]] = True
        return row

    rows = [random_half()]
    for _ in range(num_references // 2):
        row = random_half()
        rows += [row, ~row]  # complementary pair: each sample IN for exactly K/2 references
    fingerprint = {
        "plan_version": PLAN_VERSION,
        "dataset": dataset,
        "pool_size": pool_size,
        "seed": seed,
        "num_references": num_references,
        "population": population,
        "population_size": z,
        "audit_size": n,
    }
    if dataset_identity is not None:
        fingerprint["dataset_identity"] = dataset_identity
    drawn = None
    if canaries:
        fingerprint["canaries"] = canaries
        drawn = draw_canaries(canaries, seed, perm[z + n: z + n + reserved].sort().values if reserved else None,
                              pool_labels, num_classes, sample)
    return Plan(torch.stack(rows), audit_indices, population_indices, fingerprint, drawn)


def complement(index: int) -> int | None:
    """The model whose membership row is the negation of model `index`'s: references come in
    pairs (1, 2), (3, 4), ...; the target, model 0, has none (None)."""
    if index < 1:
        return None
    return index + 1 if index % 2 else index - 1


def plan_tensors(plan: Plan) -> dict[str, torch.Tensor]:
    out = {"membership": plan.membership, "audit_indices": plan.audit_indices,
           "population_indices": plan.population_indices}
    if plan.canaries is not None:
        out.update(plan.canaries.tensors())
    return out


def save_plan(plan: Plan, run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = plan_tensors(plan)
    meta, data = plan_paths(run_dir)
    atomic_write(data, lambda p: torch.save(tensors, p))
    # plan.json is written last: its presence marks a complete plan.
    record = {**plan.fingerprint, "content_sha256": tensors_sha256(tensors)}
    atomic_write(meta, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))


def load_plan(run_dir: str | Path) -> Plan | None:
    """The plan saved in `run_dir`, or None if there is none; its tensors are checked against
    the hash in plan.json (a flipped bit, a swapped file or an edited plan.json is an error)."""
    run_dir = Path(run_dir)
    meta, data = plan_paths(run_dir)
    if not meta.exists():
        if data.exists():
            raise ConfigError(f"run_dir={str(run_dir)!r} holds {data} but not its {meta.name}: the plan is incomplete or "
                              "was tampered with, and is never drawn again over it; restore plan.json or use a new --run_dir")
        return None
    try:
        record = json.loads(meta.read_text())
        recorded_sha = record.pop("content_sha256")
        tensors = torch.load(data, weights_only=True, map_location="cpu")
        plan = Plan(tensors["membership"], tensors["audit_indices"], tensors["population_indices"], record)
        k, n = record["num_references"], record["audit_size"]
        if plan.membership.shape != (1 + k, n) or plan.membership.dtype != torch.bool:
            raise ValueError(f"membership has shape {tuple(plan.membership.shape)}, expected {(1 + k, n)}")
        if record.get("canaries"):
            plan.canaries = Canaries.from_tensors(record["canaries"]["kind"], tensors)
            m = record["canaries"]["count"]
            if plan.canaries.included.shape != (m,) or plan.canaries.labels.shape != (m,):
                raise ValueError(f"the canary tensors do not hold the plan's {m} canaries")
    except Exception as err:
        raise ConfigError(f"run_dir={str(run_dir)!r}: the membership plan in {meta} / {data} is unreadable or corrupt "
                          f"({first_line(err)}); restore it or use a new --run_dir") from None
    if tensors_sha256(plan_tensors(plan)) != recorded_sha:
        raise ConfigError(f"run_dir={str(run_dir)!r}: {data} does not match the hash in {meta.name}: the plan was changed "
                          "after it was drawn; restore it or use a new --run_dir (it is never drawn again)")
    return plan


def check_fingerprint(saved: dict, wanted: dict, run_dir: str | Path) -> None:
    diff = [f"{k}: plan has {saved.get(k)!r}, config gives {wanted[k]!r}" for k in wanted
            if k != "dataset_identity" and saved.get(k) != wanted[k]]
    if saved.get("canaries") and "canaries" not in wanted:  # keys that only a plan with canaries has
        diff.append(f"canaries: plan has {saved['canaries']!r}, config gives None")
    if saved.get("dataset") == wanted.get("dataset"):  # another dataset's identity says nothing more
        changed = describe_difference(saved.get("dataset_identity"), wanted.get("dataset_identity"))
        if changed:
            diff.append(f"the dataset under data.root changed ({changed})")
    if diff:
        raise ConfigError(
            f"run_dir={str(run_dir)!r} holds a membership plan made with other settings ({'; '.join(diff)}); "
            "use the same settings or a new --run_dir (the existing plan is never overwritten)"
        )


def _read_plan_locked(run_dir: str | Path) -> Plan | None:
    """load_plan under the plan lock: a process of a SLURM array that only checks the plan
    must not read it while another task is between writing plan.pt and plan.json (it would see
    plan.pt alone and call the plan incomplete). A run directory where the lock file cannot be
    made (read-only) is read without it: nothing can be writing there."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(PlanLock(run_dir))
        except OSError:
            pass
        return load_plan(run_dir)


def load_or_create_plan(run_dir: str | Path | None, save: bool = True, **settings) -> Plan:
    """Load the plan in run_dir (checking its fingerprint and contents) or create and save it
    (with save=False: the plan that would be saved, nothing written). Processes that start
    together (a SLURM array) take turns: one draws, the others load."""
    plan = make_plan(**settings)  # cheap (a few permutations) and validates the settings
    if run_dir is None:
        return plan
    if not save:
        saved = _read_plan_locked(run_dir) if Path(run_dir).is_dir() else None
        if saved is not None:
            check_fingerprint(saved.fingerprint, plan.fingerprint, run_dir)
        return saved or plan
    with PlanLock(run_dir):
        saved = load_plan(run_dir)
        if saved is None:
            trained = [p.name for p in trained_model_dirs(run_dir)]
            if trained:
                raise ConfigError(f"run_dir={str(run_dir)!r} has models ({', '.join(trained)}) but no membership plan: "
                                  "it was deleted; restore plan.json and plan.pt, or use a new --run_dir")
            save_plan(plan, run_dir)
            return plan
    check_fingerprint(saved.fingerprint, plan.fingerprint, run_dir)
    return saved
