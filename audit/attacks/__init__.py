"""The attack registry: one module per attack in this package, each an `Attack` subclass
registered once by its name. An attack declares what it is (name, one-line description,
paper), what it may see of a model (its access level), what it needs (signals, reference
models, an auxiliary model it trains), its settings with their checks, and a scoring
function on tensors that returns [N] scores, higher = more likely a member.

Everything else reads this registry: `AuditSettings` (its flags and checks, `--help`), the
audit engine (which signals to compute, which attacks can run), report.json / report.md,
the W&B keys and the study tables. A user's attack is a `{class_path, init_args}` entry
beside the registered names (`resolve`); `all` selects every registered attack.

Adding an attack: one module here with one `@register` class (modules are found by listing
this package; `order` places the attack in reports).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar

import torch

from core.errors import ConfigError

# What an attack may see of a model, from least to most (design, "Signals and queries").
ACCESS_LEVELS = ("label", "confidence", "steps", "spikes", "membrane")
# Which reference models an attack needs: none; at least one (IN or OUT); an OUT reference
# for every audit sample; an IN and an OUT reference for every audit sample.
REFERENCES = ("none", "any", "out", "in_out")
# The per-model signals the engine can provide (audit/signals.py): the true-class
# probability and the rescaled logit per query and sample; the population's; a model's
# rescaled logits at each audited epoch (its trajectory, audit/trajectory.py); whether its
# prediction is right (`correct`, what the label level sees); and the SNN-native levels,
# recorded in the same pass by hooks (attacks/hooks.py) only when an attack reads them:
# the readout per time step (`steps`), spikes per spiking layer (`spikes`) and the last
# spiking layer's membrane summary (`membrane`).
SIGNALS = ("probability", "rescaled_logit", "population", "trajectory", "correct", "steps", "spikes", "membrane")
RECORDED = ("steps", "spikes", "membrane")  # the signals recorded by hooks, each its own access level


@dataclass(frozen=True)
class Setting:
    """One setting of an attack: its default, its type (for the command line), one line of
    help, and a check that raises ConfigError naming the key (`check(key, value)`)."""

    default: Any
    type: Any
    help: str
    check: Callable[[str, Any], None] = field(default=lambda key, value: None, compare=False)


@dataclass
class AttackData:
    """What an attack scores from, for one target and one query setting.

    target: the target's signals {"audit/probability": [Q, N], "audit/rescaled_logit": [Q, N],
    "population/probability": [Q, Z], ..., and the recorded levels an attack asked for:
    "audit/steps" [Q, T, N], "audit/spikes" [Q, L, N], "audit/membrane" [Q, 4, N], or their
    reasons in "unavailable" ({level: why})}; references: the same per reference; ref_in: bool
    [K, N] (None without references); extra: what an attack's `prepare` added (an auxiliary
    model's predictions, trajectories, "positions": the audited subset of the audit set or
    None); strategy: the query strategy's name ("plain", ...)."""

    target: dict
    references: list
    ref_in: torch.Tensor | None
    extra: dict = field(default_factory=dict)
    strategy: str = "plain"

    # The signals as float64. The query means of the references are built per reference and
    # then stacked ([K, N]), once per AttackData: the [K, Q, N] float64 stack is 2.2 GB at
    # K = 256, Q = 18, N = 60,000 and only per-query RMIA reads it (benchmarks/audit_scale.py;
    # tests/test_audit_scale.py checks both forms give the same scores bit for bit).
    @property
    def p_target(self) -> torch.Tensor:          # [Q, N]
        return self.target["audit/probability"].double()

    @cached_property
    def p_references(self) -> torch.Tensor:      # [K, Q, N]: every query (per-query RMIA)
        return torch.stack([r["audit/probability"] for r in self.references]).double()

    @cached_property
    def p_references_mean(self) -> torch.Tensor:  # [K, N]: averaged over the Q queries
        return _stack_query_means(self.references, "audit/probability")

    @property
    def pz_target(self) -> torch.Tensor:         # [Q, Z]
        return self.target["population/probability"].double()

    @cached_property
    def pz_references(self) -> torch.Tensor:     # [K, Q, Z]
        return torch.stack([r["population/probability"] for r in self.references]).double()

    @cached_property
    def pz_references_mean(self) -> torch.Tensor:  # [K, Z]
        return _stack_query_means(self.references, "population/probability")

    @property
    def phi_target(self) -> torch.Tensor:        # [N]
        return self.target["audit/rescaled_logit"].double().mean(0)

    @cached_property
    def phi_references(self) -> torch.Tensor:    # [K, N]
        return _stack_query_means(self.references, "audit/rescaled_logit")

    # The label level: whether each query's prediction is right (bool, every query).
    @property
    def correct_target(self) -> torch.Tensor:    # [Q, N] bool
        return self.target["audit/correct"]

    @cached_property
    def correct_references(self) -> torch.Tensor:  # [K, Q, N] bool
        return torch.stack([r["audit/correct"] for r in self.references])

    # The recorded levels, averaged over the Q queries, float64: steps [T, N] (the true-class
    # rescaled logit at each step), spikes [L, N] (spikes per spiking layer), membrane [4, N]
    # (attacks/hooks.py); the references' stacked [K, ., N]; the population's `*_z` [., Z].
    def level(self, name: str, split: str = "audit") -> torch.Tensor:
        return self.target[f"{split}/{name}"].double().mean(0)

    def level_references(self, name: str, split: str = "audit") -> torch.Tensor:
        return torch.stack([r[f"{split}/{name}"].double().mean(0) for r in self.references])

    @property
    def steps_target(self) -> torch.Tensor:      # [T, N]
        return self.level("steps")

    @cached_property
    def steps_references(self) -> torch.Tensor:  # [K, T, N]
        return self.level_references("steps")

    @property
    def steps_target_z(self) -> torch.Tensor:    # [T, Z]
        return self.level("steps", "population")

    @cached_property
    def steps_references_z(self) -> torch.Tensor:  # [K, T, Z]
        return self.level_references("steps", "population")

    @property
    def spikes_target(self) -> torch.Tensor:     # [L, N]
        return self.level("spikes")

    @cached_property
    def spikes_references(self) -> torch.Tensor:  # [K, L, N]
        return self.level_references("spikes")

    @property
    def membrane_target(self) -> torch.Tensor:   # [4, N]
        return self.level("membrane")

    @cached_property
    def membrane_references(self) -> torch.Tensor:  # [K, 4, N]
        return self.level_references("membrane")

    def missing_level(self, name: str) -> str | None:
        """Why the target or a reference lacks the recorded level `name` (None: all have it)."""
        for who, signals in (("the target", self.target), *((f"reference {i + 1} of {len(self.references)}", r)
                                                             for i, r in enumerate(self.references))):
            if f"audit/{name}" not in signals:
                why = (signals.get("unavailable") or {}).get(name, "it was not recorded")
                return f"{who} has no {name} level: {why}" if who != "the target" else f"no {name} level: {why}"
        return None


def _stack_query_means(references: list[dict], key: str) -> torch.Tensor:
    """[K, N]: each reference's signal `key` [Q, N] in float64, averaged over its Q queries."""
    return torch.stack([r[key].double().mean(0) for r in references])


@dataclass
class AttackContext:
    """What an attack's `prepare` may use, for one audit of one target: the data module
    (plan, loaders, run directory), the target's index, hyper-parameters and signals per
    query strategy (audit set and population), the length of one model's training in epochs,
    the target's checkpoint hash (None for the live model while it trains), the device, the
    audited epochs so far (`epoch`, 0-based; None for a finished model), and whether this is
    the last audit of the target (`final`)."""

    dm: Any
    target: int
    hparams: dict
    target_signals: dict
    epochs: int
    checkpoint_sha256: str | None = None
    device: Any = None
    epoch: int | None = None
    final: bool = True
    references: list = field(default_factory=list)


class Attack:
    """Base class of every attack. Subclasses set the class attributes and `score`.

    An instance holds the attack's settings (`self.args`): a registered attack takes them
    from `AuditSettings` (the top-level keys its `settings` declare), a user's attack from
    its `init_args`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    access: ClassVar[str] = "confidence"
    signals: ClassVar[tuple[str, ...]] = ("probability",)
    references: ClassVar[str] = "none"
    auxiliary: ClassVar[str | None] = None      # the auxiliary model it trains, in words (None: none)
    settings: ClassVar[dict[str, Setting]] = {}
    default: ClassVar[bool] = False             # in the default selection (`attacks` unset)
    study: ClassVar[bool] = False               # a column of the study tables
    finding: ClassVar[bool] = False             # tested in the study's findings
    headline: ClassVar[bool] = False            # the attack of the console line and the study's ROC overlay
    order: ClassVar[int] = 1000                 # position in reports, settings and --help (registered attacks)

    def __init__(self, **args):
        unknown = sorted(set(args) - set(self.settings))
        if unknown:
            raise ConfigError(f"attack {self.report_name()!r}: unknown setting(s) {unknown}; "
                              f"allowed: {sorted(self.settings) or 'none'}")
        self.args = {key: args.get(key, s.default) for key, s in self.settings.items()}

    @classmethod
    def report_name(cls) -> str:
        return cls.name or cls.__name__

    def check(self, where: str = "") -> "Attack":
        """Each setting's check (ConfigError naming `where` + the key); returns self."""
        for key, s in self.settings.items():
            s.check(f"{where}{key}", self.args[key])
        return self

    def needs(self, signal: str) -> bool:
        return signal in self.signals

    def unavailable(self, data: AttackData) -> str | None:
        """Why this attack cannot score `data` (None: it can). References are checked by the
        engine from `references`; the recorded levels among `signals` (the model may lack
        them: an ANN has no steps) here; an attack adds its own conditions by overriding it."""
        for name in self.signals:
            if name in RECORDED:
                why = data.missing_level(name)
                if why:
                    return why
        return None

    def prepare(self, context: "AttackContext") -> dict:
        """Work before scoring that is not tensor math (an auxiliary model, recorded
        trajectories): returns what goes into `AttackData.extra`. Default: nothing."""
        return {}

    def details(self) -> dict:
        """Facts about this attack's run for report.json's `attack_details` (e.g. an
        auxiliary model's training budget); {} for none."""
        return {}

    def cost(self, queries: int, references: int, extra: dict) -> dict:
        """What this attack took on one target, counted rather than timed (the counts do not
        depend on the machine): `models_trained`, the models trained for it besides the
        target (the references it reads, plus its auxiliary model), and `inference_passes`,
        forward passes of one model over the audit set and the population with one query
        (the target's and each reference's passes of a setting with `queries` queries).
        `references`: how many references this target has; `extra`: what `prepare` added."""
        refs = references if self.references != "none" else 0
        return {"models_trained": refs + (1 if self.auxiliary else 0), "inference_passes": queries * (1 + refs)}

    def score(self, data: AttackData) -> torch.Tensor:
        """[N] float scores, higher = more likely a member."""
        raise NotImplementedError


REGISTRY: dict[str, type[Attack]] = {}


class SpecError(ConfigError):
    """An entry of `attacks` that names no usable attack (the message is the reason alone)."""


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: add `cls` to the registry under `cls.name` (once)."""
    check_declaration(cls)
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"attack {cls.name!r} is registered twice")
    for key, s in cls.settings.items():  # a setting shared by two attacks is one flag: one meaning
        for other in REGISTRY.values():
            if key in other.settings and other.settings[key] != s:
                raise ValueError(f"setting {key!r} of {cls.name} differs from {other.name}'s")
    REGISTRY[cls.name] = cls
    return cls


def check_declaration(cls) -> None:
    """A declaration the engine can use: a name, a known access level, references and signals."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ConfigError(f"attack {getattr(cls, '__name__', cls)!r} is not allowed; allowed: a subclass of "
                          "audit.attacks.Attack")
    name = cls.report_name()
    if cls.access not in ACCESS_LEVELS:
        raise ConfigError(f"attack {name}: access={cls.access!r} is not allowed; choose one of: {', '.join(ACCESS_LEVELS)}")
    if cls.references not in REFERENCES:
        raise ConfigError(f"attack {name}: references={cls.references!r} is not allowed; choose one of: "
                          f"{', '.join(REFERENCES)}")
    bad = [s for s in cls.signals if s not in SIGNALS]
    if bad:
        raise ConfigError(f"attack {name}: signals {bad} are not provided; choose from: {', '.join(SIGNALS)}")
    if "@" in name or "," in name or "/" in name or not name.strip():
        raise ConfigError(f"attack name {name!r} is not allowed; it must be non-empty, without '@', ',' or '/'")


def _load_modules() -> None:
    """Import every module of this package (each registers its attack), then order the
    registry by each attack's `order`."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    ordered = sorted(REGISTRY.items(), key=lambda item: (item[1].order, item[0]))
    REGISTRY.clear()
    REGISTRY.update(ordered)


_load_modules()


def recorded_levels(attacks) -> tuple[str, ...]:
    """The recorded levels (hooks, per-step readout) that `attacks` read, in RECORDED order:
    what the signal pass must record; () when none, and then no hook is registered."""
    wanted = {s for a in attacks for s in a.signals}
    return tuple(lvl for lvl in RECORDED if lvl in wanted)


def default_names() -> list[str]:
    """The attacks run when `attacks` is unset."""
    return [n for n, cls in REGISTRY.items() if cls.default]


def all_settings() -> dict[str, Setting]:
    """Every registered attack's settings, each once, in registry order (AuditSettings' flags)."""
    out: dict[str, Setting] = {}
    for cls in REGISTRY.values():
        for key, s in cls.settings.items():
            out.setdefault(key, s)
    return out


def names_with(flag: str) -> list[str]:
    """Registered attacks with a class flag set (study, finding, headline), in registry order."""
    return [n for n, cls in REGISTRY.items() if getattr(cls, flag)]


def access_of(setting: str, attacks: list[Attack] | None = None) -> str | None:
    """The access level of an attack setting name such as rmia_offline@flip,T2."""
    base = setting.split("@")[0]
    for a in attacks or []:
        if a.report_name() == base:
            return a.access
    cls = REGISTRY.get(base)
    return cls.access if cls else None


def _import_class(path: str, where: str):
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise SpecError(f"class_path {path!r} cannot be imported ({err})") from None


def resolve(spec, settings_values: dict, where: str = "") -> Attack:
    # ConfigError: the reason alone (AuditSettings prefixes the key and value); a setting's
    # own check names `where` + the setting.
    """One entry of `attacks` as an Attack instance: a registered name (its settings from
    `settings_values`, the AuditSettings' top-level keys), or {class_path, init_args} (a
    user's attack class, constructed with its init_args)."""
    if isinstance(spec, str):
        if spec not in REGISTRY:
            raise SpecError(f"{spec!r} is not a registered attack; allowed: {', '.join(REGISTRY)}, all, or "
                              "{class_path: module.Class, init_args: {...}} entries")
        cls = REGISTRY[spec]
        return cls(**{k: settings_values[k] for k in cls.settings if k in settings_values}).check(where)
    if isinstance(spec, dict) and isinstance(spec.get("class_path"), str) and set(spec) <= {"class_path", "init_args"}:
        cls = _import_class(spec["class_path"], where)
        if not isinstance(cls, type):
            raise SpecError(f"class_path {spec['class_path']!r} is not a class; allowed: a subclass of "
                              "audit.attacks.Attack")
        try:
            check_declaration(cls)
        except ConfigError as err:
            raise SpecError(str(err)) from None
        init_args = spec.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise SpecError(f"init_args={init_args!r} of {spec['class_path']} is not allowed; expected a mapping")
        return cls(**init_args).check(f"{where}{cls.report_name()}.")
    raise SpecError(f"{spec!r} is not allowed; allowed: a registered name ({', '.join(REGISTRY)}), all, or "
                      "{class_path: module.Class, init_args: {...}}")


def expand(attacks) -> list:
    """`attacks` with `all` (a string, or an entry of the list) replaced by every registered name."""
    items = [attacks] if isinstance(attacks, str) else list(attacks)
    out = []
    for a in items:
        out += list(REGISTRY) if a == "all" else [a]
    return out


def catalogue() -> str:
    """One line per registered attack, for --help and docs."""
    return "; ".join(f"{n} ({cls.access}, refs {cls.references}: {cls.description})" for n, cls in REGISTRY.items())
