"""`python run.py study --config configs/study/digits.yaml`: several run.py runs, one report.

A study YAML (see configs/study/*.yaml):

    name: digits                       # optional label
    run_dir: runs/study_digits         # each entry trains into run_dir/<entry name>/
    base_args: [...]                   # run.py flags given to every entry
    entries:                           # one run.py run each; ${run_dir} in args is the study's run_dir
      - {name: ann, args: [--model.kind, ann]}
      - {name: snn_T1, args: [--model.kind, snn, --model.T, "1"]}
    audit_args: [--queries, "[plain, 'dropout:p=0.01,n=10']"]   # given to every `run.py audit`

Before anything trains, every entry's fit and audit flags (for every seed) go through the parser
and checks that those runs use: a typo anywhere fails at once, with one line naming the entry.
Then, for each entry, in order: `run.py fit <base_args> <args> --run_dir run_dir/<name>` (finished
models are skipped, so a rerun trains nothing), a check that its plan.json equals the first
entry's (same seed, K, population, audit set), then `run.py audit <base_args> <args> <audit_args>
--run_dir run_dir/<name>` (signals come from the cache on a rerun). Then run_dir/study/ gets
report.json (every entry's attacks, target, settings, curves), report.md (one row per entry),
leakage_vs_T.png, roc_overlay.png, auc_per_epoch.png, and leakage_vs_epsilon.png when an entry
was trained with DP (model.dp); with DP or canaries, report.md's DP audit table. How each entry was made
(init, references overrides) is read from its model_0/done.json. Exit codes: 0 done, 2 bad study file or flag (one line,
nothing written), 1 a run failed or the plans differ (one line naming the entry).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError, RunFailure
from core.rundir import plan_paths, report_paths

from .report import table, write_study_report

STUDY_KEYS = {"name", "run_dir", "base_args", "entries", "audit_args", "seeds", "compare"}
ENTRY_KEYS = {"name", "args"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


class StudyError(ConfigError):
    """A bad study file or flag (exit 2)."""


class StudyFailure(RunFailure):
    """A run failed or the entries disagree (exit 1)."""


# -- the study file ---------------------------------------------------------------------------
def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float, bool)) for v in value):
        raise StudyError(f"{where}: expected a list of strings, got {value!r}")
    out = [str(v) if not isinstance(v, bool) else str(v).lower() for v in value]
    for flag in out:
        if flag == "--run_dir" or flag.startswith("--run_dir="):
            raise StudyError(f"{where}: --run_dir is set by the study (run_dir/<entry name>); remove it")
    return out


def load_study(path: str | Path, run_dir: str | None = None) -> dict:
    """Parse and validate a study YAML; raises StudyError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study config {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StudyError(f"study config {str(path)!r} is not valid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"study config {str(path)!r}: expected a mapping with keys {sorted(STUDY_KEYS)}")
    unknown = sorted(set(raw) - STUDY_KEYS, key=str)
    if unknown:
        raise StudyError(f"study config {str(path)!r}: unknown key {unknown[0]!r}; allowed: {sorted(STUDY_KEYS)}")
    rd = run_dir if run_dir is not None else raw.get("run_dir")
    if not isinstance(rd, str) or not rd.strip():
        raise StudyError(f"study config {str(path)!r}: run_dir must be a non-empty path, got {rd!r}")
    entries = raw.get("entries")
    if not isinstance(entries, list) or not entries:
        raise StudyError(f"study config {str(path)!r}: entries must be a non-empty list")
    seen: set[str] = set()
    parsed = []
    for i, entry in enumerate(entries):
        where = f"entries[{i}]"
        if not isinstance(entry, dict):
            raise StudyError(f"{where}: expected a mapping with keys {sorted(ENTRY_KEYS)}, got {entry!r}")
        bad = sorted(set(entry) - ENTRY_KEYS, key=str)
        if bad:
            raise StudyError(f"{where}: unknown key {bad[0]!r}; allowed: {sorted(ENTRY_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise StudyError(f"{where}.name: expected a non-empty string, got {name!r}")
        if not NAME_RE.match(name) or name in (".", "..", "study"):
            raise StudyError(f"{where}.name={name!r}: use letters, digits and _ . + - only "
                             "(it names a folder; no '/', not 'study')")
        if name in seen:
            raise StudyError(f"{where}.name={name!r}: duplicate entry name")
        seen.add(name)
        parsed.append({"name": name, "args": _str_list(entry.get("args"), f"{where}.args")})
    name = raw.get("name", path.stem)
    if not isinstance(name, str):
        raise StudyError(f"study config {str(path)!r}: name must be a string, got {name!r}")
    seeds = raw.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
                              or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds)):
        raise StudyError(f"study config {str(path)!r}: seeds must be a list of distinct integers >= 0, e.g. [0, 1, 2], "
                         f"got {seeds!r}")
    base, audit_args = _str_list(raw.get("base_args"), "base_args"), _str_list(raw.get("audit_args"), "audit_args")
    for flag in ("--data.seed", "--seed_everything"):
        if seeds is not None and any(a == flag or a.startswith(flag + "=") for e in parsed for a in [*base, *e["args"]]):
            raise StudyError(f"study config {str(path)!r}: {flag} is set per seed by `seeds`; remove it from the args")
    compare = _compare(raw.get("compare"), path, [*base, *audit_args, *(a for e in parsed for a in e["args"])])
    return {"name": name, "run_dir": rd, "entries": parsed, "seeds": seeds, "base_args": base, "audit_args": audit_args,
            "compare": compare}


def _compare(value: Any, path: Path, args: list[str]) -> list[list[str]]:
    """`compare`: pairs of attack settings [a, b] (a minus b). Each attack must be registered
    or named in the study's args (a user's attack by its class), so a typo fails before any
    training."""
    from audit.attacks import REGISTRY

    if value is None:
        return []
    where = f"study config {str(path)!r}: compare"
    example = "e.g. [[qmia, rmia_offline], [trajectory, lira_online]]"
    if not isinstance(value, list) or not value:
        raise StudyError(f"{where} must be a non-empty list of [attack, attack] pairs, {example}; got {value!r}")
    out = []
    for i, pair in enumerate(value):
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, str) and x for x in pair)
                or pair[0] == pair[1]):
            raise StudyError(f"{where}[{i}]={pair!r}: expected two different attack names, {example}")
        for x in pair:
            attack = x.split("@")[0]
            if attack not in REGISTRY and not any(attack in a for a in args):
                raise StudyError(f"{where}[{i}]: unknown attack {attack!r}; allowed: the registered attacks "
                                 f"{sorted(REGISTRY)} or a user's attack named in the study's args")
        out.append(list(pair))
    return out


def seed_dir(spec: dict, seed: int | None) -> Path:
    """Where one seed's runs go: run_dir/seed_<s>/ with seeds, run_dir/ without."""
    return Path(spec["run_dir"]) / f"seed_{seed}" if seed is not None else Path(spec["run_dir"])


def entry_argv(spec: dict, entry: dict, seed: int | None) -> list[str]:
    """The run.py flags of one entry for one seed: ${run_dir} is that seed's folder (so a
    converted chain starts from the same seed's models), and the plan and model seeds are
    both the seed."""
    root = str(seed_dir(spec, seed))
    argv = [a.replace("${run_dir}", root) for a in [*spec["base_args"], *entry["args"]]]
    if seed is not None:
        argv += ["--data.seed", str(seed), "--seed_everything", str(seed)]
    return [*argv, "--run_dir", str(Path(root) / entry["name"])]


# -- running ----------------------------------------------------------------------------------
def _run(step: str, entry: str, argv: list[str]) -> None:
    from training.cli import run_cli

    print(f"study: {entry}: python run.py {shlex.join([step, *argv])}", file=sys.stderr, flush=True)
    try:
        code = run_cli([step, *argv], print_tables=False)  # the study prints its own table at the end
    except SystemExit as err:  # jsonargparse exits on a bad flag
        code = err.code if isinstance(err.code, int) else 1
    except Exception as err:  # noqa: BLE001 - one line naming the entry, not a traceback
        text = str(err).strip().splitlines()
        raise StudyFailure(f"entry {entry!r}: run.py {step} failed: {type(err).__name__}: "
                           f"{text[0] if text else ''}") from err
    if code:
        raise StudyFailure(f"entry {entry!r}: run.py {step} exited with code {code}")


def _plan_of(entry_dir: Path, entry: str) -> dict:
    path = plan_paths(entry_dir)[0]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StudyFailure(f"entry {entry!r}: cannot read {path}: {err}") from None


def _report_of(entry_dir: Path, entry: str) -> dict:
    path = report_paths(entry_dir)["json"]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StudyFailure(f"entry {entry!r}: cannot read {path}: {err}") from None


def _facts_of(entry_dir: Path, entry: str) -> dict:
    """How the entry's target was made, as its done.json records it: init (scratch or
    converted) and the references overrides of its run."""
    from core.rundir import read_done

    try:
        return read_done(entry_dir, 0)
    except ValueError as err:
        raise StudyFailure(f"entry {entry!r}: {err}") from None


# -- CLI --------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (not argparse's usage block)
        raise StudyError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py study", description="Train and audit a matrix of run.py runs on one "
                "membership plan; write run_dir/study/report.{json,md} and plots.")
    p.add_argument("--config", required=True, help="study YAML (configs/study/*.yml)")
    p.add_argument("--run_dir", default=None, help="override the study file's run_dir")
    p.add_argument("--seeds", default=None, help="run and report only these of the file's seeds, comma-separated "
                   "(e.g. 0 or 0,1): one seed per job on a cluster, or a first look; the rest resume later")
    return p


def select_seeds(spec: dict, value: str | None) -> dict:
    """The study restricted to `--seeds` (checked against the file's `seeds`)."""
    if value is None:
        return spec
    if not spec.get("seeds"):
        raise StudyError(f"--seeds {value!r}: study {spec['name']!r} has no `seeds` key; remove --seeds")
    try:
        chosen = [int(x) for x in value.split(",")]
    except ValueError:
        raise StudyError(f"--seeds expects comma-separated integers from the study's seeds {spec['seeds']}, "
                         f"got {value!r}") from None
    unknown = [x for x in chosen if x not in spec["seeds"]]
    if unknown or len(set(chosen)) != len(chosen):
        raise StudyError(f"--seeds {value!r}: each must be one of the study's seeds {spec['seeds']}, once")
    return {**spec, "seeds": [x for x in spec["seeds"] if x in chosen]}


def audit_argv(spec: dict, seed: int | None, fit_argv: list[str], rotate: bool) -> list[str]:
    """The `run.py audit` flags of an entry whose `run.py fit` flags are `fit_argv`."""
    audit_args = [a.replace("${run_dir}", str(seed_dir(spec, seed))) for a in spec["audit_args"]]
    return [*fit_argv[:-2], *audit_args, *(["--targets", "all"] if rotate else []), *fit_argv[-2:]]


def check_study(spec: dict) -> None:
    """Every entry's `run.py fit` and `run.py audit` flags, for every seed, through the parser and
    checks the runs themselves use, before anything trains: a typo in the last entry fails now,
    not hours in (StudyError naming the entry)."""
    from training.cli import parse_config

    for seed in spec.get("seeds") or [None]:
        for e in spec["entries"]:
            tag = e["name"] if seed is None else f"{e['name']} (seed {seed})"
            argv = entry_argv(spec, e, seed)
            step = "fit"
            try:
                cfg = parse_config(argv)
                step = "audit"
                parse_config(audit_argv(spec, seed, argv, rotate=not cfg.get("references")), "audit")
            except ConfigError as err:
                raise StudyError(f"entry {tag!r}: run.py {step}: {err}") from None


def run_study(spec: dict) -> dict:
    """Every entry for every seed, in order (a whole seed first, so a converted chain finds the
    same seed's models, and an interrupted study has complete seeds); then the report."""
    seeds = spec.get("seeds") or [None]
    plans, reports, facts = {}, {}, {}
    total, n = len(seeds) * len(spec["entries"]), 0
    for seed in seeds:
        plan0, first = None, None
        for e in spec["entries"]:
            n += 1
            name = e["name"]
            tag = name if seed is None else f"{name} (seed {seed})"
            print(f"study {spec['name']}: entry {n} of {total}: {tag}", file=sys.stderr, flush=True)
            argv = entry_argv(spec, e, seed)
            run_dir = Path(argv[-1])
            _run("fit", tag, argv)
            plan = _plan_of(run_dir, tag)
            if plan0 is None:
                plan0, first = plan, name
            elif plan != plan0:
                diff = sorted(k for k in set(plan) | set(plan0) if plan.get(k) != plan0.get(k))
                raise StudyFailure(f"entry {tag!r}: membership plan differs from entry {first!r}'s in "
                                   + ", ".join(f"{k} ({plan.get(k)!r} vs {plan0.get(k)!r})" for k in diff)
                                   + "; every entry must use the same data settings")
            fact = _facts_of(run_dir, tag)
            # Every model in turn as the target, unless the references differ from the target.
            _run("audit", tag, audit_argv(spec, seed, argv, rotate=not fact.get("references")))
            reports[name, seed] = _report_of(run_dir, tag)
            facts[name, seed] = fact
        plans[seed] = plan0
    return write_study_report(spec, plans, reports, facts, seed_dir)


def study_main(argv: list[str]) -> int:
    """`run.py study --config FILE [--run_dir DIR] [--seeds 0,1]`: 0 done, 2 bad input (nothing written), 1 a run failed."""
    try:
        flags = parser().parse_args(argv)
        spec = select_seeds(load_study(flags.config, flags.run_dir), flags.seeds)
        check_study(spec)  # every entry's flags, before the first one trains
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        study = run_study(spec)
    except StudyFailure as err:
        print(f"error: study {spec['name']!r}: {err}", file=sys.stderr)
        return 1
    print(table(study))
    print(f"study report: {Path(spec['run_dir']) / 'study' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(study_main(sys.argv[1:]))
