"""Differentially private training (DP-SGD, Abadi et al., CCS 2016) of a Classifier, with Opacus.

`model.dp: {epsilon | noise_multiplier, delta, max_grad_norm[, accountant][, audit_canaries]}`; null
trains without DP.

Opacus does the mechanism: GradSampleModule's hooks compute per-sample gradients; DPOptimizer
clips each to max_grad_norm, sums them, adds N(0, (noise_multiplier * max_grad_norm)^2) noise and
divides by the expected batch size; DPDataLoader draws Poisson batches (every training sample joins
a batch independently with probability q, the sampling that the accounting assumes); the
accountant (RDP, or PRV) turns the (noise multiplier, q, steps) history into epsilon at delta,
and get_noise_multiplier finds the noise for a target epsilon.

What is ours is an SNN's per-sample gradient. Its layers run multi-step on [T, B, ...] inputs
(spikingjelly folds T into the batch inside each layer, [T*B, ...]), so Opacus' own rules would
clip per (time step, sample) row, and the accounting, which counts a sample once per step, would
be silently wrong. Here Opacus is told that an SNN's batch is dimension 1: it hands our grad
samplers [B, T, ...] and they sum over T, so each sample's gradient is that of its own loss
through all its T steps. An ANN's layers are batch-first and get the same rules on [B, ...].
BatchNorm mixes the samples of a batch and has no per-sample gradient: DP needs model.norm=group
for a built-in network; in a user's network (model.net), model.dp.fix_modules=true replaces it
(Opacus' ModuleValidator.fix: BatchNorm by GroupNorm) and says what it replaced.

White-box gradient canaries (`audit_canaries: m`, the white-box audit of Steinke, Nasr and
Jagielski, NeurIPS 2023) audit this mechanism itself: see `GradientCanaries`.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass

import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import compute_group_norm_grad_sample, compute_linear_grad_sample, register_grad_sampler
from opacus.optimizers import DPOptimizer
from opacus.utils.module_utils import trainable_modules
from opacus.utils.tensor_utils import unfold2d
from spikingjelly.activation_based import layer
from torch import nn

from core.errors import ConfigError, check_choice, check_int, check_number
from core.faults import dp_fault
from core.seeds import derive_seed

# Opacus' hooks on the first layer, whose input (the data) needs no gradient, make torch warn at every step.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs")

DP_KEYS = ("epsilon", "noise_multiplier", "delta", "max_grad_norm", "accountant", "fix_modules", "audit_canaries")
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class DPSettings:
    """model.dp, checked. Exactly one of epsilon (the noise is calibrated to reach it after the
    planned steps) and noise_multiplier (epsilon is whatever the accountant says) is set."""

    delta: float
    max_grad_norm: float
    epsilon: float | None = None
    noise_multiplier: float | None = None
    accountant: str = "rdp"
    fix_modules: bool = False  # replace what DP-SGD cannot train (BatchNorm) with Opacus' ModuleValidator.fix
    audit_canaries: int = 0  # white-box gradient canaries (GradientCanaries); 0: none


def check_dp(dp) -> DPSettings | None:
    """model.dp as DPSettings (None: no DP); a bad value is a ConfigError naming its key."""
    if dp is None:
        return None
    shape = ("{epsilon | noise_multiplier, delta, max_grad_norm[, accountant: rdp | prv][, fix_modules: bool]"
             "[, audit_canaries: int]}")
    if not isinstance(dp, dict):
        raise ConfigError(f"model.dp={dp!r} is not allowed; expected null (no DP) or a mapping {shape}")
    unknown = sorted(str(k) for k in set(dp) - set(DP_KEYS))
    if unknown:
        raise ConfigError(f"model.dp has unknown key(s) {unknown}; allowed: {', '.join(DP_KEYS)}")
    given = [k for k in ("epsilon", "noise_multiplier") if dp.get(k) is not None]
    if len(given) != 1:
        raise ConfigError(f"model.dp={dict(dp)!r} is not allowed; give exactly one of epsilon (the target, the noise "
                          f"is calibrated to it) and noise_multiplier (epsilon follows from it), not "
                          f"{'both' if given else 'neither'}")
    for key in ("delta", "max_grad_norm"):
        if dp.get(key) is None:
            raise ConfigError(f"model.dp.{key} is missing; expected a mapping {shape}")
    check_number(f"model.dp.{given[0]}", dp[given[0]], 0, low_open=True)
    check_number("model.dp.delta", dp["delta"], 0, 1, low_open=True, high_open=True)
    check_number("model.dp.max_grad_norm", dp["max_grad_norm"], 0, low_open=True)
    accountant = dp.get("accountant", "rdp")
    check_choice("model.dp.accountant", accountant, ACCOUNTANTS)
    fix = dp.get("fix_modules", False)
    if not isinstance(fix, bool):
        raise ConfigError(f"model.dp.fix_modules={fix!r} is not allowed; expected true (replace the layers DP-SGD "
                          "cannot train, e.g. BatchNorm by GroupNorm) or false")
    canaries = dp.get("audit_canaries", 0)
    check_int("model.dp.audit_canaries", canaries, 0, what=" (white-box gradient canaries; 0: none, else at least 2)")
    if canaries == 1:
        raise ConfigError("model.dp.audit_canaries=1 is not allowed; the one-run bound needs 0 (no audit) or at least 2")
    return DPSettings(delta=float(dp["delta"]), max_grad_norm=float(dp["max_grad_norm"]), accountant=accountant,
                      fix_modules=fix, audit_canaries=canaries, **{given[0]: float(dp[given[0]])})


_SAID: set = set()


def fix_modules(net: nn.Module) -> nn.Module:
    """model.dp.fix_modules: Opacus' ModuleValidator.fix on the network (BatchNorm becomes
    GroupNorm, and whatever else Opacus has a fixer for), with one line saying what it replaced.
    Deterministic, so a network rebuilt from a checkpoint's hyper-parameters gets the same
    layers and loads the same state."""
    from opacus.validators import ModuleValidator

    before = {name: type(m).__name__ for name, m in net.named_modules()}
    fixed = ModuleValidator.fix(net)
    after = {name: type(m).__name__ for name, m in fixed.named_modules()}
    replaced = [f"{name} ({kind} -> {after[name]})" for name, kind in before.items()
                if name in after and after[name] != kind]
    line = (f"model.dp.fix_modules: replaced {len(replaced)} module(s): {', '.join(replaced)}" if replaced
            else "model.dp.fix_modules: nothing to replace")
    if line not in _SAID:  # once per process: the model is rebuilt from checkpoints too
        _SAID.add(line)
        print(line, file=sys.stderr, flush=True)
    return fixed


def check_trainer(dp, trainer) -> None:
    """Trainer settings that DP-SGD cannot run under, refused before anything trains."""
    if dp is None:
        return
    world = int(getattr(trainer, "world_size", 1) or 1)
    if world > 1:
        # Lightning's DDP all-reduces the plain gradient during backward; DP-SGD must clip each
        # sample's gradient before any sum and add the noise once (Opacus' DPDDP and
        # DistributedDPOptimizer), which Lightning's strategy does not do.
        raise ConfigError(f"model.dp is not supported with {world} processes (trainer.devices x trainer.num_nodes); "
                          f"train DP models on one device, or set model.dp=null")
    accumulate = getattr(trainer, "accumulate_grad_batches", 1)
    if accumulate != 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r} is not allowed with model.dp; expected 1 "
                          f"(a Poisson batch is one DP step; raise data.batch_size instead)")
    clip = getattr(trainer, "gradient_clip_val", None)
    if clip:
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} is not allowed with model.dp; DP-SGD clips each sample's "
                          f"gradient to model.dp.max_grad_norm (Lightning's clip of the batch gradient would be overwritten)")
    precision = str(getattr(trainer, "precision", "32-true"))
    if precision.startswith("16"):
        raise ConfigError(f"trainer.precision={precision!r} is not allowed with model.dp; its loss scaling would "
                          f"scale the per-sample gradients before clipping; use 32-true or bf16-mixed")


# -- per-sample gradients of spikingjelly's layers, summed over an SNN's time steps -------------
def _per_sample(rule):
    """Opacus grad sampler for a spikingjelly layer: `rule(layer, x, g, steps)` gets the input and
    output gradient as [B, T, ...] (T = 1 for a single-step layer) and returns the per-sample
    gradients [B, *param.shape]. An empty Poisson batch gives empty per-sample gradients, so that
    the DP step still adds its noise."""

    def sampler(module, activations, backprops):
        x = activations[0].to(backprops.dtype)
        multi = getattr(module, "step_mode", "s") == "m"
        if x.shape[0] == 0:
            return {p: torch.zeros(0, *p.shape, dtype=p.dtype, device=p.device)
                    for p in module.parameters(recurse=False) if p.requires_grad}
        if not multi:
            x, backprops = x.unsqueeze(1), backprops.unsqueeze(1)
        elif dp_fault("per_step_clip"):  # test-only bug: every (sample, step) row becomes a "sample"
            x, backprops = x.flatten(0, 1).unsqueeze(1), backprops.flatten(0, 1).unsqueeze(1)
            module.max_batch_len = x.shape[0]  # Opacus sizes its per-sample buffer by this
        return rule(module, x, backprops)

    return sampler


def _conv2d(conv: layer.Conv2d, x: torch.Tensor, g: torch.Tensor) -> dict:
    """Per-sample gradient of a convolution: the input's patches (im2col) times the output gradient,
    summed over the output positions and the T steps in one einsum, per group of channels."""
    if conv.padding_mode != "zeros":
        raise NotImplementedError(f"model.dp: no per-sample gradient for padding_mode={conv.padding_mode!r}")
    n, steps, groups = x.shape[0], x.shape[1], conv.groups
    cols = unfold2d(x.reshape(n * steps, *x.shape[2:]), kernel_size=conv.kernel_size, padding=conv.padding,
                    stride=conv.stride, dilation=conv.dilation)  # [n*T, C*kh*kw, L], channel-major
    cols = cols.reshape(n, steps, groups, -1, cols.shape[-1])
    g = g.reshape(n, steps, groups, conv.out_channels // groups, -1)
    out = {}
    if conv.weight.requires_grad:
        out[conv.weight] = torch.einsum("ntgol,ntgpl->ngop", g, cols).reshape(n, *conv.weight.shape)
    if conv.bias is not None and conv.bias.requires_grad:
        out[conv.bias] = g.sum((1, 4)).reshape(n, -1)
    return out


def _group_norm(norm: layer.GroupNorm, x: torch.Tensor, g: torch.Tensor) -> dict:
    n, steps = x.shape[:2]
    rows = compute_group_norm_grad_sample(norm, [x.flatten(0, 1)], g.flatten(0, 1))  # Opacus' rule per row
    return {p: v.reshape(n, steps, *v.shape[1:]).sum(1) for p, v in rows.items()}


def _linear(linear: layer.Linear, x: torch.Tensor, g: torch.Tensor) -> dict:
    return compute_linear_grad_sample(linear, [x], g)  # Opacus' rule sums over the middle (T) dimension


SAMPLERS = {layer.Conv2d: _conv2d, layer.GroupNorm: _group_norm, layer.Linear: _linear}
for _cls, _rule in SAMPLERS.items():
    register_grad_sampler(_cls)(_per_sample(_rule))


def check_layers(net: nn.Module, time_major: bool) -> None:
    """Every trainable layer of an SNN must have one of our T-summing rules (Opacus' fallback
    would treat [T, B] rows as samples); an ANN may use any layer Opacus supports."""
    if not time_major:
        return
    bad = [f"{name} ({type(m).__name__})" for name, m in trainable_modules(net) if type(m) not in SAMPLERS]
    if bad:
        raise ConfigError(f"model.dp: no per-sample gradient over an SNN's time steps for layer(s) {bad[:3]}; "
                          f"supported: {', '.join(c.__name__ for c in SAMPLERS)} (spikingjelly's layer module)")


# -- white-box gradient canaries -----------------------------------------------------------------
class GradientCanaries:
    """m Dirac gradient canaries (Steinke, Nasr and Jagielski, NeurIPS 2023, white box).

    Canary i is one coordinate c_i of the flattened trainable parameters (m distinct ones, drawn
    at random) and a coin b_i: included with probability 1/2, once for the whole training. An
    included canary is a training "sample" like any other: at each DP step it joins the batch
    with probability q, the Poisson sampling rate, and then its per-sample gradient enters the
    batch's per-sample gradients before clipping. That gradient is built the way an SNN's is:
    one row per time step, each max_grad_norm * e_{c_i}, combined over the T steps by the same
    rule as the network's samples (summed, then clipped once: a norm of max_grad_norm). So the
    accountant's epsilon bounds the canaries' privacy too, and a fault in the clipping, the
    combination over time steps or the noise shows in the canaries.

    After training, canary i's score is how far its coordinate moved against the gradient,
    theta_start[c_i] - theta_now[c_i]; the one-run bound on (scores, b) is the white-box eps_lb.
    """

    def __init__(self, count: int, params: list[torch.Tensor], steps_per_sample: int, seed: int):
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        if count > total:
            raise ConfigError(f"model.dp.audit_canaries={count} is not allowed: the network has {total} trainable "
                              f"parameters and each canary needs a coordinate of its own; at most {total}")
        self.count, self.params, self.steps_per_sample, self.seed = count, params, steps_per_sample, seed
        g = torch.Generator().manual_seed(derive_seed(seed, "gradient canaries"))
        self.coords = torch.randperm(total, generator=g)[:count].sort().values
        self.included = torch.rand(count, generator=g) < 0.5
        self.start: torch.Tensor | None = None  # the coordinates' values before the first DP step
        offsets = torch.tensor([0, *sizes]).cumsum(0)
        # per parameter: the canaries whose coordinate is in it, and every coordinate's offset in it
        self._where = [(((self.coords >= offsets[k]) & (self.coords < offsets[k + 1])).nonzero().squeeze(1),
                        self.coords - offsets[k]) for k in range(len(params))]

    def values(self) -> torch.Tensor:
        flat = torch.cat([p.detach().reshape(-1).cpu() for p in self.params])
        return flat[self.coords].double()

    def rows(self, step: int, sample_rate: float, max_grad_norm: float) -> list[torch.Tensor]:
        """The per-sample gradient rows of this step's canaries, one tensor [rows, *p.shape] per
        parameter, combined over the time steps as the network's samples are."""
        if self.start is None:
            self.start = self.values()
        g = torch.Generator().manual_seed(derive_seed(self.seed, "canary step", step))
        joins = self.included & (torch.rand(self.count, generator=g) < sample_rate)
        active = joins.nonzero().squeeze(1)  # canary numbers in this batch
        per_step = self.steps_per_sample
        out = []
        for k, (index, local) in enumerate(self._where):
            p = self.params[k]
            rows = torch.zeros(len(active), per_step, p.numel(), dtype=p.dtype, device=p.device)
            mine = torch.isin(active, index)
            r = mine.nonzero().squeeze(1)
            rows[r, :, local[active[r]].to(p.device)] = max_grad_norm
            out.append(combine_steps(rows).reshape(-1, *p.shape))
        return out

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(each canary's score: how far its coordinate moved against its gradient since the first
        step, [m]; its inclusion bit, [m] bool). The bound from them is computed above this package
        (audit/canaries.py `whitebox_canary_audit`): models do not import the attack math."""
        return (self.start if self.start is not None else self.values()) - self.values(), self.included

    def state_dict(self) -> dict:
        return {"count": self.count, "seed": self.seed,
                "start": None if self.start is None else [float(v) for v in self.start]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("count") != self.count or state.get("seed") != self.seed:
            raise ConfigError(f"model.dp.audit_canaries: the checkpoint's canaries ({state.get('count')}, seed "
                              f"{state.get('seed')}) are not this run's ({self.count}); keep model.dp of the run")
        if state.get("start") is not None:
            self.start = torch.tensor(state["start"], dtype=torch.float64)


def combine_steps(rows: torch.Tensor) -> torch.Tensor:
    """Per-(sample, time step) gradients [n, T, P] -> the rows DP-SGD clips: one per sample, its
    T steps summed ([n, P]); with the test-only per_step_clip fault, one per (sample, step)."""
    return rows.flatten(0, 1) if dp_fault("per_step_clip") else rows.sum(1)


class _CanaryDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer with the canaries' rows added to the per-sample gradients it clips."""

    def __init__(self, *args, canary_rows, **kwargs):
        super().__init__(*args, **kwargs)
        self.canary_rows = canary_rows

    def clip_and_accumulate(self):
        extra = self.canary_rows()
        for p, rows in zip(self.params, extra):
            p.grad_sample = torch.cat([self._get_flat_grad_sample(p), rows.to(p.device, p.dtype)])
        super().clip_and_accumulate()


# -- one model's DP training ---------------------------------------------------------------------
class PrivateTraining:
    """DP-SGD state of one model: the per-sample gradient hooks on its network, the noise, the
    sampling rate and the accountant. `time_major`: the network is an SNN run on [T, B, ...]."""

    def __init__(self, settings: DPSettings, net: nn.Module, time_major: bool, steps_per_sample: int = 1,
                 canary_seed: int = 0):
        """`steps_per_sample`: an SNN's T (a white-box canary's gradient has one row per step);
        `canary_seed`: where the white-box canaries' coordinates and coins come from."""
        check_layers(net, time_major)
        self.settings = settings
        self.canaries = (GradientCanaries(settings.audit_canaries, [p for p in net.parameters() if p.requires_grad],
                                          steps_per_sample if time_major else 1, canary_seed)
                         if settings.audit_canaries else None)
        # loss_reduction="sum": the training step backpropagates the sum of the per-sample losses,
        # so the hooks' gradients are each sample's own; DPOptimizer divides by the expected batch size.
        try:
            self.hooks = GradSampleModule(net, batch_first=not time_major, loss_reduction="sum", strict=True)
        except NotImplementedError as err:  # a trainable layer with buffers: BatchNorm
            raise ConfigError(f"model.dp: {str(err).strip().splitlines()[0]}; set model.dp.fix_modules=true to replace "
                              "such layers (BatchNorm by GroupNorm, with Opacus' ModuleValidator.fix), or change the "
                              "network") from None
        self.accountant = create_accountant(settings.accountant)
        self.noise_multiplier = settings.noise_multiplier
        self.sample_rate: float | None = None
        self.expected_batch_size: int | None = None
        self.planned_steps: int | None = None

    def optimizer(self, optimizer: torch.optim.Optimizer, loader, planned_steps) -> DPOptimizer:
        """`optimizer` made DP for training on `loader` (which must draw Poisson batches) for
        `planned_steps` steps; with a target epsilon, the noise is calibrated here."""
        if not isinstance(loader, DPDataLoader):
            raise ConfigError(f"model.dp needs Poisson sampling, but the training loader is a {type(loader).__name__}; "
                              "use MembershipDataModule (it draws Poisson batches for a DP model) or wrap the loader "
                              "with opacus.data_loader.DPDataLoader.from_data_loader")
        self.sample_rate = float(loader.sample_rate)
        self.expected_batch_size = max(1, int(len(loader.dataset) * self.sample_rate))  # as Opacus' make_private
        if self.settings.epsilon is not None:
            if planned_steps is None or planned_steps == float("inf"):
                raise ConfigError("model.dp.epsilon needs a bounded training length to calibrate the noise; "
                                  "set trainer.max_epochs or trainer.max_steps")
            self.planned_steps = int(planned_steps)
            # Steps already taken (a resumed run) are in the accountant; the noise is the one
            # that reaches the target after all planned steps, as in the first run.
            self.noise_multiplier = get_noise_multiplier(
                target_epsilon=self.settings.epsilon, target_delta=self.settings.delta, sample_rate=self.sample_rate,
                steps=self.planned_steps, accountant=self.settings.accountant)
        noise = 0.0 if dp_fault("no_noise") else self.noise_multiplier  # the fault: no noise, epsilon as claimed
        kwargs = dict(noise_multiplier=noise, max_grad_norm=self.settings.max_grad_norm,
                      expected_batch_size=self.expected_batch_size, loss_reduction="mean")
        if self.canaries is not None:
            if not {id(p) for p in self.canaries.params} <= {id(p) for g in optimizer.param_groups for p in g["params"]}:
                raise ConfigError("model.dp.audit_canaries: the optimizer does not train every parameter of the network")
            dp_optimizer = _CanaryDPOptimizer(optimizer, canary_rows=lambda: self._canary_rows(dp_optimizer), **kwargs)
        else:
            dp_optimizer = DPOptimizer(optimizer, **kwargs)

        def account(optim: DPOptimizer) -> None:  # Opacus' hook, with the claimed noise multiplier
            self.accountant.step(noise_multiplier=self.noise_multiplier,
                                 sample_rate=self.sample_rate * optim.accumulated_iterations)

        dp_optimizer.attach_step_hook(account)
        return dp_optimizer

    def _canary_rows(self, optim: DPOptimizer) -> list[torch.Tensor]:
        """This step's canary rows for each of the optimizer's parameters (zero rows for parameters
        outside the network)."""
        rows = dict(zip(map(id, self.canaries.params), self.canaries.rows(self.steps, self.sample_rate,
                                                                         self.settings.max_grad_norm)))
        n = next(iter(rows.values())).shape[0]
        return [rows.get(id(p), torch.zeros(n, *p.shape, dtype=p.dtype, device=p.device)) for p in optim.params]

    def canary_scores(self) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """(scores, inclusion bits, delta) of the white-box canaries as the network is now, or None
        without them (audit/canaries.py `whitebox_canary_audit` turns them into the bound)."""
        return None if self.canaries is None else (*self.canaries.scores(), self.settings.delta)

    @property
    def steps(self) -> int:
        """DP steps taken so far (every noisy update the accountant counted)."""
        return int(sum(h[-1] for h in self.accountant.history))

    def epsilon(self) -> float:
        """Epsilon spent so far at the configured delta (0 before the first step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.settings.delta))

    def facts(self) -> dict:
        """What done.json and the report state: the accountant's epsilon and what it rests on."""
        s = self.settings
        return {"epsilon": self.epsilon(), "delta": s.delta, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "steps": self.steps, "accountant": s.accountant,
                "max_grad_norm": s.max_grad_norm, "target_epsilon": s.epsilon,
                "expected_batch_size": self.expected_batch_size}

    def state_dict(self) -> dict:
        """For the checkpoint: plain lists, so that torch.load(weights_only=True) reads it."""
        out = {"accountant": self.settings.accountant,
               "history": [[float(nm), float(q), int(k)] for nm, q, k in self.accountant.history],
               "settings": asdict(self.settings)}
        if self.canaries is not None:
            out["canaries"] = self.canaries.state_dict()
        return out

    def load_state_dict(self, state: dict, label: str = "the checkpoint being resumed") -> None:
        if state.get("accountant") != self.settings.accountant:
            raise ConfigError(f"{label} was accounted with model.dp.accountant={state.get('accountant')!r}, this run "
                              f"asks for {self.settings.accountant!r}; keep the accountant of the run or use a new run_dir")
        self.accountant.history = [tuple(h) for h in state.get("history", [])]
        if self.canaries is not None and state.get("canaries") is not None:
            self.canaries.load_state_dict(state["canaries"])
