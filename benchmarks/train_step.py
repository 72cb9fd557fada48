"""Training-step time of the SNN at T = 1, 2, 4 against the ANN of the same architecture.

    python benchmarks/train_step.py                # default CNN, digits-shaped and CIFAR-shaped inputs
    python benchmarks/train_step.py --arch resnet18 --width 0.25 --shape 3 32 32

A step is forward + backward + SGD step on one batch (128 by default). All models of one
input shape are timed in one process, in interleaved rounds whose order rotates, and
each gets the median of its rounds, so the ratios are fair on a noisy machine (load from
other jobs inflates every time, but alike). Every model is built by the same code path
(same threads, same allocator settings). Goal: SNN(T) / ANN <= 1.2 x T, i.e. the neuron
dynamics cost little next to the T-fold convolution work. About 30 s on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_modules import Classifier
from lightning_modules.networks import keep_large_tensors_in_heap

TIME_STEPS = (1, 2, 4)
GOAL = 1.2  # allowed SNN(T) / ANN per time step


def step_time(model: Classifier, x: torch.Tensor, y: torch.Tensor, opt) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - start


def time_models(models: dict, x, y, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each model over `rounds` interleaved rounds."""
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    names = list(models)
    times = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # no model always runs first
        for k in order:
            t = step_time(models[k], x, y, opts[k])
            if r >= warmup:
                times[k].append(t)
    return {k: statistics.median(ts) for k, ts in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--shape", type=int, nargs=3, action="append", help="input shape C H W (repeatable)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = args.shape or [[1, 8, 8], [3, 32, 32]]
    print(f"arch={args.arch} width={args.width} batch={args.batch} threads={args.threads} rounds={args.rounds} "
          f"torch={torch.__version__} large-tensors-in-heap={keep_large_tensors_in_heap()}")
    print(f"{'input':>10} {'model':>8} {'ms/step':>9} {'ratio':>7} {'ratio/T':>8} {'goal':>6}  ok")
    misses = []
    for shape in shapes:
        torch.manual_seed(0)
        x, y = torch.rand(args.batch, *shape), torch.randint(0, 10, (args.batch,))
        models = {"ann": Classifier(kind="ann", arch=args.arch, width=args.width, input_shape=shape)}
        for T in TIME_STEPS:
            models[f"snn T={T}"] = Classifier(kind="snn", arch=args.arch, T=T, width=args.width, input_shape=shape)
        med = time_models(models, x, y, args.rounds)
        name = "x".join(map(str, shape))
        for k, t in med.items():
            T = 1 if k == "ann" else models[k].T
            ratio, goal = t / med["ann"], (1.0 if k == "ann" else GOAL * T)
            ok = "" if k == "ann" else ("yes" if ratio <= goal else "NO")
            if ok == "NO":
                misses.append(f"{k} at {name}: {ratio:.2f} > {goal:.1f}")
            print(f"{name:>10} {k:>8} {t * 1e3:9.2f} {ratio:7.2f} {ratio / T:8.2f} {goal:6.1f}  {ok}")
    n = len(shapes) * len(TIME_STEPS)
    print(f"verdict: goal SNN(T)/ANN <= {GOAL} x T " + (f"met at all {n} (input, T)" if not misses else
          f"missed at {len(misses)} of {n}: " + "; ".join(misses)))


if __name__ == "__main__":
    main()
