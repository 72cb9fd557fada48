"""Will one batch fit in memory? Checked before anything is built or written, so that
`--model.T 100000` is one line naming the settings, not an out-of-memory traceback after
the plan and a model folder were written.

The estimate: an SNN's input is encoded to [T, B, C, H, W] float32, and training keeps
every layer's output of every step for backpropagation through time. One probe of the
network on a single sample at one step (no gradient) gives the floats per sample per step
(the input plus every leaf module's output); times T, the batch size and 4 bytes is the
training batch's activations. The audit queries keep no graph: about the input plus the
two largest layer outputs at once, at data.eval_batch_size. The gradient, the optimiser's
state and the allocator's slack come on top, so a batch that passes can still fail near
the limit: that is the fallback, an out-of-memory error turned into one line
(`out_of_memory_line`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from core.errors import ConfigError


def available_bytes(device) -> int | None:
    """Free memory for tensors on `device`: CUDA's free memory, or MemAvailable of /proc/meminfo
    on the CPU (None when it cannot be read)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def floats_per_step(model) -> tuple[int, int, int]:
    """(input, sum of every leaf module's output, largest leaf output) in floats, for one sample
    at one time step: a probe of the network without gradient. Outputs the probe cannot
    measure (a network that refuses a one-sample input) count as zero."""
    shape = tuple(model.input_shape)
    n_in = math.prod(shape)
    sizes: list[int] = []

    def hook(module, args, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel())

    leaves = [m for m in model.net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        x = torch.zeros((1, 1, *shape) if model.kind == "snn" else (1, *shape), device=model.device)
        with torch.no_grad():
            model.net(x)
    except Exception:
        sizes = []
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if model.kind == "snn":
            from spikingjelly.activation_based import functional

            functional.reset_net(model.net)
    return n_in, sum(sizes), max(sizes, default=0)


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def check_batch_memory(model, datamodule, device=None, available: int | None = None) -> None:
    """Refuse (one ConfigError naming model.T and the batch sizes) when one training batch or
    one audit query batch would need more memory than `device` has free."""
    available = available_bytes(device) if available is None else available
    if available is None:
        return
    steps = int(model.T) if model.kind == "snn" and model.T else 1
    n_in, n_acts, n_max = floats_per_step(model)
    train_input = 4 * steps * datamodule.batch_size * n_in
    train = train_input + 4 * steps * datamodule.batch_size * n_acts
    query = 4 * steps * datamodule.eval_batch_size * (n_in + 2 * n_max)
    where = f"{torch.device(device).type if device is not None else 'cpu'} memory"
    t = f"model.T={steps} with " if model.kind == "snn" else ""
    if train > available:
        raise ConfigError(f"{t}data.batch_size={datamodule.batch_size} needs about {_size(train)} for one training "
                          f"batch (the encoded input alone {_size(train_input)}); {_size(available)} of {where} is "
                          f"available; lower {'model.T or ' if t else ''}data.batch_size")
    if query > available:
        raise ConfigError(f"{t}data.eval_batch_size={datamodule.eval_batch_size} needs about {_size(query)} for one "
                          f"audit query batch; {_size(available)} of {where} is available; lower "
                          f"{'model.T or ' if t else ''}data.eval_batch_size")


def out_of_memory_line(err: BaseException) -> str | None:
    """The one line for an out-of-memory error that passed the estimate (None: not one)."""
    text = str(err)
    if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text:
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return (f"out of memory while training ({first[:160]}); lower model.T, data.batch_size or "
                "data.eval_batch_size")
    return None
