"""ANN-to-SNN conversion (`--model.init converted`): an SNN initialised from a trained
ANN checkpoint, or from a converted SNN checkpoint at T - 1 (the T - 1 -> T chain).

From an ANN: spikingjelly 2.0's `ann2snn.Converter(RateCodingRecipe(mode=...))` traces
a plain-torch copy of the ANN (spikingjelly's `layer.BatchNorm2d` cannot be FX-traced:
its input-dim check is control flow on a proxy), calibrates one VoltageHook per ReLU on
training batches and returns a GraphModule whose ReLUs became
VoltageScaler(1/theta) -> IFNode -> VoltageScaler(theta). We read theta per ReLU from that
graph and put it in the matching ScaledIFNode of our own SNN (networks.ScaledIFNode),
whose weights are the ANN's (the state_dict keys of an ANN and an SNN of one arch are
the same: neurons have no parameters). Unlike ann2snn's IFNode, which starts at rest,
our neurons start at model.convert_v_init x theta (0.5 by default: the half-threshold
start, without which a T = 1 conversion barely fires). The GraphModule itself is thrown away: the
stored model must rebuild from hparams alone (Classifier.load_from_checkpoint, and
Classifier.from_checkpoint's weights_only load).

From a converted SNN (trained at T - 1): weights and thresholds are copied as they are.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

import torch
from torch import fx, nn
from spikingjelly.activation_based import base, neuron

from core.errors import ConfigError
from core.rundir import checkpoint_path, read_checkpoint
from .networks import ScaledIFNode

INITS = ("scratch", "converted")
# Must agree for the weights of init_from to fit this model.
MATCHING_HPARAMS = ("arch", "width", "num_classes", "input_shape", "norm")


def check_convert_mode(mode) -> None:
    """'max' or a percentile such as '99.9%' (spikingjelly's VoltageHook modes)."""
    ok = isinstance(mode, str) and (mode.lower() == "max" or re.fullmatch(r"\d+(\.\d+)?%", mode) is not None)
    if ok and mode.endswith("%"):
        ok = 0 < float(mode[:-1]) <= 100
    if not ok:
        raise ConfigError(f"model.convert_mode={mode!r} is not allowed; expected 'max' or a percentile such as '99.9%'")


def source_path(init_from, index: int) -> Path:
    """init_from is a checkpoint file, or a run directory: then model `index`'s last
    checkpoint in it, so that every reference model of an audit is converted from the
    ANN of its own split."""
    path = Path(init_from)
    return checkpoint_path(path, index) if path.is_dir() else path


def load_source(path, hparams, datamodule=None) -> tuple[dict, dict]:
    """hyper_parameters and state_dict of the init_from checkpoint, checked against this
    model's hparams and (with a datamodule) its membership plan and split; every failure
    is a ConfigError naming model.init_from."""
    key = f"model.init_from={str(path)!r}"
    plan = getattr(datamodule, "plan", None)
    # A model converted from an ANN that saw other members would leak them into the audit.
    hp, state, _ = read_checkpoint(
        path, plan, getattr(datamodule, "index", None) if plan is not None else None, label=key,
        hint="expected a checkpoint (or a run directory) of a trained ANN, or of a converted SNN at T - 1; "
             "give the source run's run_dir so that each model is converted from the one trained on its own split")
    for name in MATCHING_HPARAMS:
        mine, theirs = hparams.get(name), hp.get(name)
        if name == "input_shape":
            mine, theirs = tuple(mine), tuple(theirs) if theirs is not None else None
        if name == "norm":  # checkpoints from before model.norm existed used BatchNorm
            theirs = theirs or "batch"
        if mine != theirs:
            raise ConfigError(f"{key} has {name}={theirs!r} but this model has {name}={mine!r}; they must match")
    if not (hp.get("kind") == "ann" or (hp.get("kind") == "snn" and hp.get("init") == "converted")):
        raise ConfigError(f"{key} is a kind={hp.get('kind')!r}, init={hp.get('init', 'scratch')!r} model; expected an ANN "
                          f"checkpoint or a converted SNN (model.init=converted) checkpoint")
    return hp, state


def plain_copy(net: nn.Module) -> nn.Module:
    """A deep copy of an ANN with spikingjelly's layer.* modules turned into their torch
    base classes (same attributes, same single-step forward), so that FX can trace it."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, base.StepModule) and type(m).__module__.startswith("spikingjelly"):
            m.__class__ = next(b for b in type(m).__mro__ if b.__module__.startswith("torch.nn"))
    return net


def ann_thresholds(ann: nn.Module, batches, mode: str = "max") -> dict[str, float]:
    """Per ReLU of `ann` (by module name): the threshold spikingjelly's rate-coding
    conversion gives it, calibrated on `batches` (tensors [B, C, H, W], already normalised)."""
    # Imported here: ann2snn imports `requests` (for its model downloads), which nothing else here needs.
    from spikingjelly.activation_based import ann2snn

    plain = plain_copy(ann).eval()
    relus = [n.target for n in fx.symbolic_trace(plain).graph.nodes
             if n.op == "call_module" and type(plain.get_submodule(n.target)) is nn.ReLU]
    converted = ann2snn.Converter(recipe=ann2snn.RateCodingRecipe(dataloader=list(batches), mode=mode)).convert(plain)
    thetas = []
    nodes = list(converted.graph.nodes)
    for i, n in enumerate(nodes):
        if n.op == "call_module" and isinstance(converted.get_submodule(n.target), neuron.IFNode):
            after = converted.get_submodule(nodes[i + 1].target)  # VoltageScaler(theta): the spike amplitude
            thetas.append(float(after.scale))
    if len(thetas) != len(relus):
        raise RuntimeError(f"ann2snn produced {len(thetas)} IF neurons for {len(relus)} ReLUs; cannot map thresholds")
    return dict(zip(relus, thetas))


def calibration_batches(loader, normalize: nn.Module, num_batches: int):
    """The first num_batches input batches of a (training) loader, normalised as the ANN sees them."""
    with torch.no_grad():
        return [normalize(batch[0] if isinstance(batch, (list, tuple)) else batch).cpu()
                for batch in itertools.islice(loader, num_batches)]


@torch.no_grad()
def initialise(model, loader, datamodule=None) -> str:
    """Fill `model` (a Classifier with init=converted) from model.hparams.init_from; returns a
    one-line summary. `loader` gives the calibration batches (only read for an ANN source);
    `datamodule` (optional) picks the model index for a run-directory init_from and checks
    the source's plan and split."""
    path = source_path(model.hparams.init_from, getattr(datamodule, "index", 0))
    hp, state = load_source(path, model.hparams, datamodule)
    own = model.state_dict()
    if hp["kind"] == "snn":  # the T - 1 -> T chain: copy everything, thresholds included
        model.load_state_dict({**state, "init_done": torch.ones_like(own["init_done"])})
        return f"copied weights and thresholds from the T={hp.get('T')} SNN {path}"
    ann = type(model).rebuild(hp, state, f"model.init_from={str(path)!r}")  # the ANN, from its own hparams
    batches = calibration_batches(loader, ann.normalize, model.hparams.convert_batches)
    if not batches:
        raise ConfigError("model.init=converted needs training batches to calibrate thresholds; the train loader is empty")
    thetas = ann_thresholds(ann.net, batches, model.hparams.convert_mode)
    missing, unexpected = model.load_state_dict(state, strict=False)
    neurons = dict(model.net.named_modules())
    if unexpected or any(not (k.endswith(".threshold") or k == "init_done") for k in missing):
        raise ConfigError(f"model.init_from={model.hparams.init_from!r} does not fit this model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, theta in thetas.items():
        node = neurons[name]
        assert isinstance(node, ScaledIFNode), name
        node.threshold.fill_(max(theta, 1e-6))  # a dead ReLU (max 0) must not divide by zero
    model.init_done.fill_(True)
    return (f"converted the ANN {path} with ann2snn (mode={model.hparams.convert_mode}, "
            f"{len(batches)} batches): thresholds {', '.join(f'{t:.3g}' for t in thetas.values())}")
