"""The bootstrap's cost: one roc_metrics call against B = 1,000 replicates, side by side.

    python benchmarks/bootstrap.py                    # N = 1,617 (digits' audit set) and 60,000
    python benchmarks/bootstrap.py --n 5000 --rounds 3
    python benchmarks/bootstrap.py --threads 2        # torch's default on this machine

Goal: the whole bootstrap costs at most 50x one ``roc_metrics`` call on the same
scores. Two bootstraps are timed:

- ``report``: ``roc_intervals`` as the report calls it (default metrics: AUC by
  DeLong, TPR at 1% and 0.1% FPR by the bootstrap);
- ``with AUC``: ``auc="bootstrap"``, so every replicate also computes its AUC.

Each round times roc_metrics, then each bootstrap, on the same binormal scores
(members N(1, 1), non-members N(0, 1), half of each); the table shows the
median of the rounds. roc_metrics takes well under a millisecond at N = 1,617, so
each round times it over enough calls to last 50 ms and divides.

Single-threaded by default, as benchmarks/rmia.py: on a shared 2-core machine
OpenMP spin-waits distort small ops, and this compares the two algorithms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attacks import roc_intervals, roc_metrics  # noqa: E402

GOAL = 50.0


def timed(fn, min_seconds: float = 0.0) -> float:
    """Seconds per call of fn, repeating it until min_seconds have passed."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1617, 60_000], help="audit set sizes")
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), B = {args.replicates}, "
          f"median of {args.rounds} interleaved rounds")
    head = (f"{'N':>7}  {'roc_metrics ms':>14}  {'report s':>9}  {'ratio':>6}  {'with AUC s':>10}  {'ratio':>6}"
            f"  goal <= {GOAL:.0f}x")
    print(head)
    print("-" * len(head))
    ok = True
    for n in args.n:
        g = torch.Generator().manual_seed(0)
        y = torch.arange(n) < n // 2
        s = torch.randn(n, generator=g, dtype=torch.float64) + y
        roc_intervals(s, y, num_bootstrap=10)  # warm-up: lazy imports, allocator
        t_roc, t_report, t_auc = [], [], []
        for _ in range(args.rounds):
            t_roc.append(timed(lambda: roc_metrics(s, y), min_seconds=0.05))
            t_report.append(timed(lambda: roc_intervals(s, y, num_bootstrap=args.replicates)))
            t_auc.append(timed(lambda: roc_intervals(s, y, num_bootstrap=args.replicates, auc="bootstrap")))
        roc, report, auc = (statistics.median(t) for t in (t_roc, t_report, t_auc))
        met = report / roc <= GOAL and auc / roc <= GOAL
        ok &= met
        print(f"{n:>7}  {roc * 1e3:>14.3f}  {report:>9.3f}  {report / roc:>5.1f}x  {auc:>10.3f}  {auc / roc:>5.1f}x"
              f"  {'met' if met else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
