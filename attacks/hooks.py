"""The SNN-native signals, recorded with forward hooks during the signal pass itself (never a
second pass): per time step the readout (`steps`), the activity of every spiking layer
(`spikes`) and the membrane potential of the last one (`membrane`).

Neuron modules are found in the model in the order it registers them (its forward order
for a sequential network): any spikingjelly ``BaseNode`` (the built-in networks' LIF, IF
and scaled IF nodes included) and, when snnTorch is installed, any ``snntorch.SpikingNeuron``.
An ANN's analogue of a spiking layer is an activation module (nn.ReLU and its kin): its
`spikes` are the active (> 0) outputs. An ANN has no time steps and no membrane.

Per query the recorder keeps, per layer, the number of spikes at every step ([S, B]) and,
for the last spiking layer, three per-step sums over its neurons of the potential v (sum,
sum of squares, and the mean over neurons of the running max over the steps so far), so that
the `spikes` and `membrane` signals of the first t steps (a latency audit) come from the same
pass. The potential is what the framework keeps: spikingjelly's `v` after the step's reset
(multi-step nodes record it with ``store_v_seq``, set for the pass and restored after),
snnTorch's `mem` as its neuron returns it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

RECORDED = ("steps", "spikes", "membrane")  # the levels beyond the logits; label and confidence need none
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Hardswish, nn.Softplus)


def _neuron_types() -> tuple[type, ...]:
    from spikingjelly.activation_based.neuron import BaseNode

    types: list[type] = [BaseNode]
    try:
        from snntorch import SpikingNeuron
    except ImportError:  # snnTorch is optional: its neurons are found when it is installed
        pass
    else:
        types.append(SpikingNeuron)
    return tuple(types)


def is_snn(model) -> bool:
    """An SNN in the collect contract: an int `T` (and not `kind` "ann")."""
    T = getattr(model, "T", None)
    return isinstance(T, int) and not isinstance(T, bool) and getattr(model, "kind", "snn") != "ann"


def spiking_layers(model: nn.Module) -> list[nn.Module]:
    """The neuron modules of an SNN, or the activation modules of an ANN, in registration order."""
    types = _neuron_types() if is_snn(model) else ACTIVATIONS
    return [m for m in model.modules() if isinstance(m, types)]


def level_reasons(model, levels) -> dict[str, str | None]:
    """{level: None when `model` has it, else why not (one line)} for each recorded level asked."""
    out: dict[str, str | None] = {}
    snn = is_snn(model)
    layers = spiking_layers(model) if set(levels) & {"spikes", "membrane"} else []
    for level in levels:
        if level not in RECORDED:
            raise ValueError(f"level {level!r} is not recorded by hooks; allowed: {', '.join(RECORDED)}")
        why = None
        if level == "steps":
            if not snn:
                why = "an ANN has no time steps"
            elif not callable(getattr(model, "forward_steps", None)) or getattr(model, "step_readout", True) is False:
                why = "the network returns logits [B, classes], no readout per time step [T, B, classes]"
        elif level == "membrane" and not snn:
            why = "an ANN has no membrane potential"
        elif not layers:
            why = ("no spiking neuron modules (spikingjelly BaseNode, snnTorch SpikingNeuron) in the network" if snn
                   else "no activation modules (nn.ReLU and kin) in the network")
        out[level] = why
    return out


class LevelRecorder:
    """Forward hooks that record `spikes` and/or `membrane` while the model runs.

    Use as a context manager around the pass (hooks registered on enter, removed and
    ``store_v_seq`` restored on exit, also on error); call `start()` before each forward and
    `collect()` after it. A layer whose output has no batch dimension of the expected size
    makes the levels unavailable (`failed` says why) rather than the pass fail."""

    def __init__(self, model: nn.Module, levels):
        self.levels = {lvl for lvl in levels if lvl in ("spikes", "membrane")}
        self.snn = is_snn(model)
        self.layers = spiking_layers(model) if self.levels else []
        self.last = self.layers[-1] if self.layers and "membrane" in self.levels and self.snn else None
        self.handles: list = []
        self.saved: list[tuple[nn.Module, bool]] = []
        self.failed: str | None = None
        self.batch = 0
        self.counts: list[list[Tensor]] = []
        self.v_stats: list[Tensor] = []
        self.v_max: Tensor | None = None
        self.neurons = 0

    # -- hooks -------------------------------------------------------------------------
    def __enter__(self) -> "LevelRecorder":
        from spikingjelly.activation_based.neuron import BaseNode

        for i, m in enumerate(self.layers):
            self.handles.append(m.register_forward_hook(self._hook(i, m is self.last)))
        if isinstance(self.last, BaseNode) and getattr(self.last, "step_mode", "s") == "m":
            self.saved.append((self.last, self.last.store_v_seq))
            self.last.store_v_seq = True
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for m, value in self.saved:
            m.store_v_seq = value  # its setter also drops the recorded v_seq
        self.saved.clear()

    def _batch_dim(self, module) -> int:
        return 1 if getattr(module, "step_mode", "s") == "m" else 0  # spikingjelly multi-step: [T, B, ...]

    def _hook(self, i: int, is_last: bool):
        def hook(module, inputs, output):
            if self.failed is not None:
                return
            spikes = output[0] if isinstance(output, (tuple, list)) else output
            bdim = self._batch_dim(module)
            if not isinstance(spikes, Tensor) or spikes.dim() <= bdim or spikes.shape[bdim] != self.batch:
                self.failed = (f"{type(module).__name__} returned {getattr(spikes, 'shape', type(spikes).__name__)}, "
                               f"not [{'T, ' if bdim else ''}B = {self.batch}, ...]")
                return
            steps = spikes.detach().reshape(*spikes.shape[: bdim + 1], -1)  # [S, B, n] or [B, n]
            if bdim == 0:
                steps = steps.unsqueeze(0)
            if "spikes" in self.levels and self.snn:
                # Spikes are 0 or the spike amplitude: their sum over the neurons, in units of the
                # amplitude, is the count (one reduction, no comparison pass over the layer).
                self.counts[i].append(torch.round(steps.sum(-1).double() / _amplitude(module)))
            elif "spikes" in self.levels:  # an ANN's active (> 0) units
                if not isinstance(module, (nn.ReLU, nn.ReLU6)):
                    steps = steps.clamp_min(0)  # ReLU and ReLU6 outputs are never negative
                self.counts[i].append(torch.count_nonzero(steps, -1))  # [S, B] int64
            if is_last:
                self._membrane(module, output, bdim)
        return hook

    def _membrane(self, module, output, bdim: int) -> None:
        if isinstance(output, (tuple, list)) and len(output) >= 2:  # snnTorch: (spk, [syn, ...,] mem)
            v = output[-1]
        elif bdim == 1:
            v = getattr(module, "v_seq", None)  # spikingjelly multi-step, store_v_seq
        else:
            v = getattr(module, "v", getattr(module, "mem", None))  # one step
        if not isinstance(v, Tensor) or v.dim() <= bdim or v.shape[bdim] != self.batch:
            self.failed = f"the membrane potential of {type(module).__name__} could not be read per sample"
            return
        v = v.detach().float().reshape(*v.shape[: bdim + 1], -1)
        if bdim == 0:
            v = v.unsqueeze(0)  # [S, B, n]
        peaks = []  # the mean over neurons of each one's max so far (a loop: T is small, cummax is slow)
        for step in v:
            self.v_max = step if self.v_max is None else torch.maximum(self.v_max, step)
            peaks.append(self.v_max.mean(-1))
        self.neurons = v.shape[-1]
        self.v_stats.append(torch.stack([v.sum(-1), v.square().sum(-1), torch.stack(peaks)], 1).double())  # [S, 3, B]

    # -- per forward ---------------------------------------------------------------------
    def start(self, batch_size: int) -> None:
        self.batch = int(batch_size)
        self.counts = [[] for _ in self.layers]
        self.v_stats, self.v_max, self.neurons = [], None, 0

    def collect(self) -> dict:
        """What the last forward recorded, per step: {"spikes": [[S_l, B] per layer],
        "membrane": ([S, 3, B] float64, neurons), "layers": L}; a level missing when it was not recorded."""
        out: dict = {"layers": len(self.layers)}
        if self.failed is not None:
            return out
        if "spikes" in self.levels and self.layers:
            if any(not c for c in self.counts):
                self.failed = "a spiking layer did not run in the forward pass"
                return out
            out["spikes"] = [torch.cat(c) for c in self.counts]
        if self.last is not None:
            if not self.v_stats:
                self.failed = "the last spiking layer did not run in the forward pass"
                return {"layers": len(self.layers)}
            out["membrane"] = (torch.cat(self.v_stats), self.neurons)
        return out


def _amplitude(module) -> float | Tensor:
    """The size of one spike of a neuron module: 1, a scaled IF node's `threshold` (the built-in
    converted SNNs), snnTorch's `graded_spikes_factor`."""
    for name in ("graded_spikes_factor", "threshold"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float, Tensor)) and not isinstance(value, bool):
            return value.detach().double() if isinstance(value, Tensor) else float(value)
    return 1.0


def spikes_at(counts: list[Tensor], t: int | None) -> Tensor:
    """[L, B] float32: each layer's spikes over its first t steps (all steps when t is None or
    the layer ran for fewer steps, e.g. once per forward)."""
    return torch.stack([(c[:t] if t is not None and c.shape[0] >= t else c).sum(0) for c in counts]).float()


def membrane_at(stats: tuple[Tensor, int], readout: Tensor, t: int | None) -> Tensor:
    """[4, B] float32: the readout's true-class potential (`readout` [B], the logit averaged
    over the steps), and over the first t steps and the neurons of the last spiking layer the
    mean and standard deviation of its potential and the mean over neurons of its max over
    the steps."""
    per_step, n = stats
    if t is not None and per_step.shape[0] >= t:
        per_step = per_step[:t]
    count = per_step.shape[0] * n
    mean = per_step[:, 0].sum(0) / count
    var = (per_step[:, 1].sum(0) / count - mean.square()).clamp_min(0)
    return torch.stack([readout.double(), mean, var.sqrt(), per_step[-1, 2]]).float()
