"""Training-step time of the SNN at T = 1, 2, 4 against the ANN of the same architecture.

    python benchmarks/train_step.py                # default CNN, digits-shaped and CIFAR-shaped inputs
    python benchmarks/train_step.py --arch resnet18 --width 0.25 --shape 3 32 32

One process, models timed side by side in interleaved rounds (median of rounds), so
the ratios are fair on a noisy machine. Goal: SNN(T) / ANN <= 1.2 x T.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_modules import Classifier


def step_time(model: Classifier, x: torch.Tensor, y: torch.Tensor, opt) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--shape", type=int, nargs=3, action="append", help="input shape C H W (repeatable)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = args.shape or [[1, 8, 8], [3, 32, 32]]
    print(f"arch={args.arch} width={args.width} batch={args.batch} threads={args.threads} rounds={args.rounds} "
          f"torch={torch.__version__}")
    print(f"{'input':>10} {'model':>8} {'ms/step':>9} {'ratio':>7} {'goal':>7}  ok")
    for shape in shapes:
        torch.manual_seed(0)
        x, y = torch.rand(args.batch, *shape), torch.randint(0, 10, (args.batch,))
        models = {"ann": Classifier(kind="ann", arch=args.arch, width=args.width, input_shape=shape)}
        for T in (1, 2, 4):
            models[f"snn T={T}"] = Classifier(kind="snn", arch=args.arch, T=T, width=args.width, input_shape=shape)
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
        times = {k: [] for k in models}
        for r in range(args.rounds + 2):
            for k, m in models.items():
                t = step_time(m, x, y, opts[k])
                if r >= 2:  # two warm-up rounds
                    times[k].append(t)
        ann = statistics.median(times["ann"])
        for k, ts in times.items():
            med = statistics.median(ts)
            ratio = med / ann
            T = 1 if k == "ann" else int(k.split("=")[1])
            goal = 1.0 if k == "ann" else 1.2 * T
            ok = "" if k == "ann" else ("yes" if ratio <= goal else "NO")
            print(f"{'x'.join(map(str, shape)):>10} {k:>8} {med * 1e3:9.2f} {ratio:7.2f} {goal:7.1f}  {ok}")


if __name__ == "__main__":
    main()
