"""A DP-SGD training step (model.dp) against a plain one, for the ANN and the SNN (T = 4).

    python benchmarks/dp_step.py                        # digits-shaped and Fashion-MNIST-shaped inputs
    python benchmarks/dp_step.py --shape 3 32 32 --batch 128 --width 0.5

A plain step is forward + backward + SGD step. A DP step is forward + backward with Opacus'
per-sample gradient hooks (for the SNN summed over the T steps, lightning_modules/privacy.py),
then DPOptimizer's clipping, noise and SGD step. Both use the same network with GroupNorm (DP
needs it), so the ratio is the cost of DP alone; the default BatchNorm network's plain step is
shown too. Every model of one input shape is timed in one process, in interleaved rounds whose
order rotates; each gets the median of its rounds. Goal: DP / plain <= 3 for the ANN and the SNN.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import Classifier
from lightning_modules.networks import keep_large_tensors_in_heap

GOAL = 3.0
DP = {"noise_multiplier": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}


def make(kind: str, variant: str, args, shape):
    """(model, optimizer, step function) of one timed variant: plain-batch, plain-group or dp."""
    torch.manual_seed(0)
    kw = dict(kind=kind, arch=args.arch, width=args.width, input_shape=shape, T=args.T)
    if variant == "dp":
        model = Classifier(**kw, dp=DP)
        # The sampling rate only enters the accounting; a loader of the batch size gives one.
        loader = DPDataLoader.from_data_loader(
            DataLoader(TensorDataset(torch.zeros(args.batch * 10, 1)), batch_size=args.batch))
        opt = model.private.optimizer(torch.optim.SGD(model.parameters(), lr=0.01), loader, planned_steps=100)
        loss_fn = lambda logits, y: torch.nn.functional.cross_entropy(logits, y, reduction="sum")  # noqa: E731
    else:
        model = Classifier(**kw, norm=variant.split("-")[1])
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        loss_fn = torch.nn.functional.cross_entropy
    model.train()

    def step(x, y) -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        return time.perf_counter() - start

    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, action="append", help="input shape C H W (repeatable)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = args.shape or [[1, 8, 8], [1, 28, 28]]
    print(f"arch={args.arch} width={args.width} batch={args.batch} T={args.T} threads={args.threads} "
          f"rounds={args.rounds} torch={torch.__version__} large-tensors-in-heap={keep_large_tensors_in_heap()}")
    print(f"{'input':>8} {'model':>8} {'step':>12} {'ms/step':>9} {'vs plain':>9} {'goal':>5}  ok")
    misses = []
    for shape in shapes:
        torch.manual_seed(0)
        x, y = torch.rand(args.batch, *shape), torch.randint(0, 10, (args.batch,))
        steps = {(kind, v): make(kind, v, args, shape) for kind in ("ann", "snn")
                 for v in ("plain-batch", "plain-group", "dp")}
        names = list(steps)
        times = {k: [] for k in names}
        for r in range(args.warmup + args.rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:  # no variant always runs first
                t = steps[k](x, y)
                if r >= args.warmup:
                    times[k].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        label = "x".join(map(str, shape))
        for kind in ("ann", "snn"):
            base = med[(kind, "plain-group")]
            for v in ("plain-batch", "plain-group", "dp"):
                ratio = med[(kind, v)] / base
                ok = ("yes" if ratio <= GOAL else "NO") if v == "dp" else ""
                if ok == "NO":
                    misses.append(f"{kind} at {label}: {ratio:.2f}")
                name = kind if kind == "ann" else f"snn T={args.T}"
                print(f"{label:>8} {name:>8} {v:>12} {med[(kind, v)] * 1e3:9.2f} {ratio:9.2f} "
                      f"{GOAL if v == 'dp' else '':>5}  {ok}")
    n = 2 * len(shapes)
    print(f"verdict: goal DP / plain (GroupNorm) <= {GOAL} " + (f"met at all {n}" if not misses else
          f"missed at {len(misses)} of {n}: " + "; ".join(misses)))


if __name__ == "__main__":
    main()
