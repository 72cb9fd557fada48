"""The audit's settings, declared once: the training callback (`MembershipAttack`) and
`run.py audit` take them as keyword arguments and build these objects, the study runner
and `submit` pass them through, and `check()` validates every value before any model is
loaded or queried (a ConfigError naming the key: one line, exit 2)."""

from __future__ import annotations

from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Union

from attacks import parse_query
from core.errors import ConfigError, check_int, check_number
from datamodules.plan import MIN_AUDIT_SIZE, MIN_PER_CLASS, WHY_AUDIT, WHY_PER_CLASS

from .attacks import REGISTRY, Attack, SpecError, all_settings, catalogue, default_names, expand, resolve

_DOC = """How the target is attacked.

    Args:
        queries: query strategies: plain, flip, "dropout:p=0.01,n=10", "dropout:p=0.01,n=10,per_timestep=true";
            for event data "event_drop:p=0.1,n=10", "event_jitter:sigma=0.5,n=10".
        attacks: registered attack names, "all" (every registered attack), or {class_path: module.Class,
            init_args: {...}} entries for attacks of your own (docs/attacks.md); default: {defaults}.
            Registered: {catalogue}.
        query_seed: seed of the input-dropout masks (the same for every model).
        audit_subset: audit a fixed random subset of this many audit samples (null: all); at least 50,
            holding 20 members and 20 non-members of each model audited as a target (docs/limits.md).
        subset_seed: seed of that subset.
{attack_settings}
        bootstrap: replicates of the stratified bootstrap behind each TPR interval (0: no intervals).
        eps_delta: the delta of the empirical epsilon lower bound (eps_lb), in [0, 1).
        exclude_complement: leave a target's complement out of its references (the default). The
            plan pairs the references: model 2 is trained on exactly model 1's non-members, model 4
            on model 3's, and so on. With its complement among the references, which references are
            OUT for a sample reveals the sample's membership in the target, and a target that
            answers every input the same scores AUC 1.000 under RMIA and LiRA
            (tests/test_complement.py). So targets 1..K (`--targets`, the rotation at the end of
            fit) get K - 1 references; model 0 has no complement and keeps all K. false keeps every
            other model as a reference, only to reproduce that bias.
    """


class _AuditSettings:
    """The methods of AuditSettings; its fields are built below from the attack registry."""

    def check(self, where: str = "") -> "AuditSettings":
        """Validate every value (ConfigError naming `where` + the key); returns self."""
        if not isinstance(self.queries, (list, tuple)) or not self.queries:
            raise ConfigError(f"{where}queries={self.queries!r} is not allowed; expected a non-empty list such as "
                              "[plain, 'dropout:p=0.01,n=10']")
        try:
            names = [parse_query(q).name for q in self.queries]
        except ValueError as err:
            raise ConfigError(f"{where}queries={list(self.queries)!r}: {err}") from None
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}queries={list(self.queries)!r} is not allowed; a query strategy is listed twice")
        check_int(f"{where}query_seed", self.query_seed, 0)
        if self.audit_subset is not None:
            check_int(f"{where}audit_subset", self.audit_subset, MIN_AUDIT_SIZE,
                      what=f" or null (all audit samples): {WHY_AUDIT}")
        check_int(f"{where}subset_seed", self.subset_seed, 0)
        for key, s in all_settings().items():  # every attack setting, selected or not: a typo never waits
            s.check(f"{where}{key}", getattr(self, key))
        if not (self.bootstrap == 0 or (isinstance(self.bootstrap, int) and not isinstance(self.bootstrap, bool)
                                        and self.bootstrap >= 100)):
            raise ConfigError(f"{where}bootstrap={self.bootstrap!r} is not allowed; expected 0 (no intervals) or an "
                              "integer >= 100 (1000 by default)")
        check_number(f"{where}eps_delta", self.eps_delta, 0.0, 1.0, high_open=True)
        if not isinstance(self.exclude_complement, bool):
            raise ConfigError(f"{where}exclude_complement={self.exclude_complement!r} is not allowed; expected true "
                              "or false")
        self.attack_objects(where)
        return self

    def check_subset(self, membership, positions, targets, where: str = "") -> None:
        """The audit_subset at `positions` (None: the whole audit set) must hold MIN_PER_CLASS
        members and as many non-members of every model in `targets` (rows of the plan's
        `membership`); checked before any model trains or is queried."""
        if positions is None:
            return
        for t in targets:
            members = int(membership[t][positions].sum())
            if min(members, positions.numel() - members) < MIN_PER_CLASS:
                raise ConfigError(f"{where}audit_subset={self.audit_subset!r} draws {members} member(s) and "
                                  f"{positions.numel() - members} non-member(s) of model {t} (subset_seed="
                                  f"{self.subset_seed}); expected {MIN_PER_CLASS} of each at least (a larger "
                                  f"audit_subset, or null for all): {WHY_PER_CLASS}")

    def attack_objects(self, where: str = "") -> list[Attack]:
        """The selected attacks as instances (ConfigError naming `where`attacks for a bad entry)."""
        ok = isinstance(self.attacks, str) or (isinstance(self.attacks, (list, tuple)) and self.attacks)
        if not ok:
            raise ConfigError(f"{where}attacks={self.attacks!r} is not allowed; expected all or a non-empty list of "
                              f"registered names ({', '.join(REGISTRY)}) and {{class_path, init_args}} entries")
        values = {key: getattr(self, key) for key in all_settings()}
        out = []
        for spec in expand(self.attacks):
            try:
                out.append(resolve(spec, values, where))
            except SpecError as err:
                raise ConfigError(f"{where}attacks={self.attacks!r} is not allowed; {err}") from None
        names = [a.report_name() for a in out]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{where}attacks={self.attacks!r} is not allowed; {', '.join(twice)} listed twice "
                              "(each attack once)")
        return out

    def check_inputs(self, event_data: bool, where: str = "") -> "AuditSettings":
        """Every query strategy fits the data: image strategies for images, event strategies
        for event frames (ConfigError before any model is queried); returns self."""
        want = "events" if event_data else "images"
        bad = [s.name for s in self.strategies if s.acts_on not in ("any", want)]
        if bad:
            allowed = ('plain, flip, "event_drop:p=<p>,n=<n>", "event_jitter:sigma=<frames>,n=<n>"' if event_data
                       else 'plain, flip, "dropout:p=<p>,n=<n>[,per_timestep=true]"')
            raise ConfigError(f"{where}queries={list(self.queries)!r}: {', '.join(bad)} do(es) not apply to "
                              f"{'event frames' if event_data else 'images'}; allowed for this dataset: {allowed}")
        return self

    @property
    def strategies(self) -> list:
        return [parse_query(q) for q in self.queries]

    @property
    def score_kwargs(self) -> dict:
        """The settings of the selected registered attacks, each once, in registry order."""
        selected = [REGISTRY[a] for a in expand(self.attacks) if isinstance(a, str) and a in REGISTRY]
        return {key: getattr(self, key) for key in all_settings() if any(key in cls.settings for cls in selected)}

    def describe(self) -> dict:
        """The settings as the report records them (a user's attack: its class_path and init_args)."""
        own = {a["class_path"].rpartition(".")[2]: a for a in expand(self.attacks) if isinstance(a, dict)}
        return {"queries": [s.name for s in self.strategies], "query_seed": self.query_seed,
                "audit_subset": self.audit_subset, **self.score_kwargs, "bootstrap": self.bootstrap,
                "eps_delta": self.eps_delta, "exclude_complement": self.exclude_complement,
                **({"own_attacks": list(own.values())} if own else {})}


def _build():
    """AuditSettings: the common fields, then every registered attack's settings (its flags),
    then the report's; its docstring (the flags' --help) lists the registered attacks."""
    fields = [("queries", list[str], field(default_factory=lambda: ["plain"])),
              ("attacks", Union[str, list[Union[str, dict]]], field(default_factory=default_names)),
              ("query_seed", int, field(default=0)),
              ("audit_subset", Union[int, None], field(default=None)),
              ("subset_seed", int, field(default=0))]
    fields += [(key, s.type, field(default=s.default)) for key, s in all_settings().items()]
    fields += [("bootstrap", int, field(default=1000)),
               ("eps_delta", float, field(default=0.0)),
               ("exclude_complement", bool, field(default=True))]
    cls = make_dataclass("AuditSettings", fields, bases=(_AuditSettings,))
    cls.__module__ = __name__
    lines = [f"        {key}: {s.help}" for key, s in all_settings().items()]
    cls.__doc__ = _DOC.replace("{defaults}", ", ".join(default_names())).replace("{catalogue}", catalogue()) \
        .replace("{attack_settings}", "\n".join(lines))
    return cls


AuditSettings = _build()


def check_latency_values(latencies) -> list[int] | None:
    """None, or a non-empty list of integers >= 1 (before any model is known)."""
    if latencies is None:
        return None
    if not isinstance(latencies, (list, tuple)) or not latencies \
            or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in latencies):
        raise ConfigError(f"latencies={latencies!r} is not allowed; expected null or a non-empty list of integers >= 1")
    return list(latencies)


def check_latencies(latencies, trained_T: int | None, index: int, step_readout: bool | None = True) -> list[int] | None:
    """`run.py audit --latencies`: None, or a non-empty list of integers >= 1, for an SNN only;
    a latency other than the trained T only for an SNN with a readout per time step
    (`step_readout`, from its done.json)."""
    if check_latency_values(latencies) is None:
        return None
    if trained_T is None:
        raise ConfigError(f"latencies={list(latencies)!r}: model {index} is an ANN; latencies apply to SNNs only")
    if step_readout is False and any(t != trained_T for t in latencies):
        raise ConfigError(f"latencies={list(latencies)!r}: model {index}'s model.net returns logits [B, classes], "
                          f"not a readout per time step; latency audits need a network that returns "
                          f"[T, B, classes] (only its trained T={trained_T} can be audited)")
    return list(latencies)


def check_report_dir(report_dir, run_dir, index: int) -> Path | None:
    """`run.py audit --report_dir`: a folder of its own (made if missing), never a file and
    never one of the run's own folders."""
    if report_dir is None:
        return None
    rd = Path(report_dir)
    if str(report_dir).strip() == "":
        raise ConfigError("report_dir='' is not allowed; expected a folder path (made if missing) or null")
    if rd.exists() and not rd.is_dir():
        raise ConfigError(f"report_dir={str(report_dir)!r} is a file; expected a folder (made if missing)")
    target, root = rd.resolve(), Path(run_dir).resolve()
    inside_model = target.is_relative_to(root) and any(part.startswith("model_") for part in target.relative_to(root).parts)
    if target == root or inside_model:
        raise ConfigError(f"report_dir={str(report_dir)!r} would mix the report with the run's own files "
                          f"(the run directory or a model_<k>/ folder); expected a folder of its own, "
                          f"e.g. {Path(run_dir) / 'audit_latency'}")
    return rd


def check_targets(targets, num_references: int, finished: list[int], default: int) -> list[int]:
    """`run.py audit --targets`: null (model `default` only), "all" (every finished model), or a
    list of model indices, each finished; the first one is the report's main target."""
    if targets is None:
        return [default]
    if targets == "all":
        if not finished:
            raise ConfigError("targets='all': no model of this run has finished training")
        return sorted(finished)
    if not isinstance(targets, (list, tuple)) or not targets or any(
            isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= num_references for t in targets):
        raise ConfigError(f"targets={targets!r} is not allowed; expected null, 'all', or a list of model indices in "
                          f"[0, {num_references}] (0 = the target, 1..K = references)")
    unfinished = [t for t in targets if t not in finished]
    if unfinished:
        raise ConfigError(f"targets={list(targets)!r}: model(s) {unfinished} have not finished training; "
                          f"finished: {sorted(finished)}")
    return list(dict.fromkeys(targets))
