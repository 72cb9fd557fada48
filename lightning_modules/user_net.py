"""Your own network as the model: `model.net: {class_path: pkg.module.Class, init_args: {...}}`.

The spec stays plain data in the hyper-parameters (a checkpoint is read with
weights_only=True, so it must hold no objects); the module is built from it here,
every time a Classifier is built or rebuilt. The class must be importable from where
run.py runs (the repository root: `examples.my_snn.MySNN` works there).

The contract a network must keep (docs/design.md, "Your own network"):

- model.kind ann: the normalised image [B, C, H, W] in, logits [B, classes] out;
- model.kind snn: the encoded input [T, B, C, H, W] in (the image repeated T times,
  normalised, or Poisson spikes), and out either the readout of every step
  [T, B, classes] (the logits are their mean, and latency audits read them) or the
  logits [B, classes] (no latency audit then);
- the same query twice gives the same logits. Before every query the tool resets every
  spikingjelly module (functional.reset_net) and it puts spikingjelly layers in
  multi-step mode (functional.set_step_mode(net, "m")); state kept anywhere else
  (snnTorch neurons, buffers of your own) is the network's to reset in its forward;
- something trainable: parameters whose gradient reaches the logits.

`check_contract` runs one small batch through the tool's own query path (three
forwards of 2 or 3 samples) when the model is built, so a network that breaks the
contract stops before training with one line saying what was expected.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping

import torch
from torch import nn
from spikingjelly.activation_based import base, functional

from core.errors import ConfigError, first_line

SPEC = "{class_path: package.module.Class, init_args: {...}}"
# Constructor arguments the tool fills in from the data when the class takes them and
# init_args does not give them, so that one config serves every dataset.
FROM_DATA = ("num_classes", "input_shape")


def net_name(hparams) -> str | None:
    """What a report calls the architecture: model.arch, or model.net's class_path."""
    spec = hparams.get("net")
    return spec.get("class_path") if isinstance(spec, Mapping) else hparams.get("arch")


def _check_plain(key: str, value) -> None:
    """init_args must be what YAML and JSON hold: the spec is saved in every checkpoint,
    which is read with weights_only=True, and in done.json."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(f"{key}[{i}]", v)
        return
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        for k, v in value.items():
            _check_plain(f"{key}.{k}", v)
        return
    raise ConfigError(f"{key}={value!r} is not allowed; init_args hold plain data (numbers, strings, booleans, "
                      f"lists, mappings), which the checkpoint stores and rebuilds the network from")


def check_spec(spec) -> dict:
    """model.net as {"class_path": str, "init_args": dict} (ConfigError naming what is wrong)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str) \
            or set(spec) - {"class_path", "init_args"}:
        raise ConfigError(f"model.net={spec!r} is not allowed; expected {SPEC} naming a torch.nn.Module class")
    path = spec["class_path"]
    module_name, _, name = path.rpartition(".")
    if not module_name or not name:
        raise ConfigError(f"model.net.class_path={path!r} is not allowed; expected a dotted path "
                          f"package.module.Class, e.g. examples.my_snn.MySNN")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ConfigError(f"model.net.init_args={init_args!r} is not allowed; expected a mapping of the "
                          f"constructor's arguments")
    _check_plain("model.net.init_args", dict(init_args))
    return {"class_path": path, "init_args": dict(init_args)}


def import_net_class(path: str) -> type[nn.Module]:
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ConfigError(f"model.net.class_path={path!r} does not import ({type(err).__name__}: {first_line(err)}); "
                          f"expected an importable package.module.Class (run.py runs from the repository root)"
                          ) from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ConfigError(f"model.net.class_path={path!r}: module {module_name} has no attribute {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        what = "a class" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ConfigError(f"model.net.class_path={path!r} is {what} but not a torch.nn.Module subclass; expected "
                          f"the class of a network")
    return cls


def build_user_net(spec, num_classes: int, input_shape) -> nn.Module:
    """The network that `spec` (model.net) describes, num_classes and input_shape filled in
    from the data where its constructor takes them and init_args leaves them out."""
    spec = check_spec(spec)
    path, kwargs = spec["class_path"], dict(spec["init_args"])
    cls = import_net_class(path)
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        for key, value in zip(FROM_DATA, (int(num_classes), list(input_shape))):
            if key in signature.parameters and key not in kwargs:
                kwargs[key] = value
        try:
            signature.bind(**kwargs)
        except TypeError as err:
            raise ConfigError(f"model.net.init_args={spec['init_args']!r} does not fit {path}{signature}: "
                              f"{first_line(err)}") from None
    try:
        net = cls(**kwargs)
    except Exception as err:
        raise ConfigError(f"model.net: {path}(**{kwargs!r}) raised {type(err).__name__}: {first_line(err)}") from None
    if not any(p.requires_grad for p in net.parameters()):
        raise ConfigError(f"model.net={path} has no trainable parameters; expected a network to train")
    return net


def _shape(t) -> str:
    return "[" + ", ".join(map(str, t)) + "]"


@torch.no_grad()
def _query(model, x):
    return model(x)


def check_contract(model) -> None:
    """Run model (a Classifier with a user network) on one small random batch through the
    query path the attacks use; ConfigError (one line) if the network breaks the contract.
    Sets model.step_readout: whether the network gives a readout per time step
    ([T, B, classes]; False for an ANN), which decides how model(x) reads it.

    The batch size differs from T, so that [B, T, classes] cannot pass for [T, B, classes].
    The input comes from a generator of its own: building a model draws nothing from the
    global seed beyond what its layers draw. Eval mode, as the attacks query: no batch-norm
    statistics move; the training mode and the network's state are restored afterwards."""
    hp = model.hparams
    path, kind, classes = hp.net["class_path"], hp.kind, int(hp.num_classes)
    where = f"model.net={path} (model.kind={kind}" + (f", model.T={model.T})" if kind == "snn" else ")")
    if kind == "ann" and any(isinstance(m, base.MemoryModule) for m in model.net.modules()):
        # An ANN is queried without a reset: stateful neurons would leak between queries.
        raise ConfigError(f"{where} holds spiking neurons (spikingjelly memory modules); expected an ANN, or set "
                          f"model.kind=snn (ANN references of your SNN: --references '{{kind: ann, net: null}}' "
                          f"for the built-in model.arch, or net: an ANN class of your own)")
    T = model.T
    B = 3 if T == 2 else 2
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((B, *model.input_shape), generator=gen) if model.input_frames is None else \
        torch.randint(0, 3, (B, model.input_frames, *model.input_shape), generator=gen).float()  # event counts
    was_training = model.training
    model.eval()
    try:
        try:
            with torch.no_grad():
                raw = model.net(model.ann_input(x)) if kind == "ann" else model._snn_output(x)
        except Exception as err:
            given = _shape((B, *model.input_shape)) if kind == "ann" else _shape((T, B, *model.input_shape))
            raise ConfigError(f"{where} fails on an input of shape {given} ({type(err).__name__}: {first_line(err)}); "
                              f"expected it to take " + ("[B, C, H, W]" if kind == "ann" else "[T, B, C, H, W]")
                              + f" with C, H, W = {', '.join(map(str, model.input_shape))} from the data") from None
        if not isinstance(raw, torch.Tensor):
            raise ConfigError(f"{where} returned a {type(raw).__name__}; expected one tensor of logits: "
                              + ("[B, classes]" if kind == "ann" else "[T, B, classes] or [B, classes]")
                              + " (wrap a network that returns (spikes, membrane) to return one of them)")
        allowed = {"[B, classes]": (B, classes)} if kind == "ann" else \
            {"[T, B, classes]": (T, B, classes), "[B, classes]": (B, classes)}
        if tuple(raw.shape) not in allowed.values():
            why = ""
            if raw.dim() >= 1 and any(tuple(raw.shape[:-1]) == a[:-1] for a in allowed.values()):
                why = f": {raw.shape[-1]} outputs per sample, but the data has {classes} classes"
            raise ConfigError(f"{where} returned shape {_shape(raw.shape)} for a batch of B={B}{why}; expected "
                              + " or ".join(f"{n} = {_shape(a)}" for n, a in allowed.items()))
        model.step_readout = kind == "snn" and raw.dim() == 3
        first = model(x)  # with autograd, as in training
        if not first.requires_grad:
            raise ConfigError(f"{where}: its logits do not depend on any trainable parameter through autograd "
                              f"(a spike function without a surrogate gradient?); nothing would train")
        first = first.detach()
        second = _query(model, x)
        if not torch.allclose(first, second, rtol=1e-4, atol=1e-5):
            gap = float((first - second).abs().max())
            raise ConfigError(f"{where} gives different logits for the same input queried twice (largest difference "
                              f"{gap:.3g}): it keeps state between queries that the tool cannot reset; reset it at the "
                              f"start of forward (spikingjelly modules are reset by the tool; snnTorch: mem = "
                              f"lif.reset_mem())")
    finally:
        model.train(was_training)
        functional.reset_net(model.net)
