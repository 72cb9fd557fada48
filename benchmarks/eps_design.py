"""Does the one-run epsilon bound keep its confidence under this tool's membership plan?

    python benchmarks/eps_design.py                   # N = 1,000, eps = 1, 20,000 plans per row
    python benchmarks/eps_design.py --runs 5000 --eps 2

The audited algorithm is eps-DP randomized response: its output for each
sample is the true membership bit with probability e^eps / (1 + e^eps), else
the flipped bit. The auditor guesses "member" for its k+ highest outputs and
"non-member" for its k- lowest (random tie-break), as ``eps_lower_bound``
does. A valid 95% bound exceeds the true eps in at most 5% of the plans.

For each (k+, k-) the table gives how often the bound exceeded eps:

- ``indep.``: membership independent per sample (the paper's assumption), paper's p-value;
- ``half, paper``: exactly N/2 members, a uniformly random half (this tool's plan), paper's p-value;
- ``half, plan``: the same plans, with the plan's p-value (``design="half"``: x 2^N / C(N, N/2)).

``size`` is the exact rejection rate the paper's test would have if the correct
guesses were Binomial(r, q): the level it actually runs at (below 5%, as the
count is discrete). Rates carry a binomial standard error of about
sqrt(0.05 * 0.95 / runs) (0.15 points at 20,000 runs).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attacks import p_value  # noqa: E402
from attacks.epsilon import _eps_from_counts, plan_log_factor  # noqa: E402


def correct_guesses(runs: int, n: int, eps: float, k_plus: int, k_minus: int, half: bool, g) -> torch.Tensor:
    if half:
        member = torch.rand(runs, n, generator=g).argsort(1) < n // 2  # a uniformly random half per run
    else:
        member = torch.rand(runs, n, generator=g) < 0.5
    keep = torch.rand(runs, n, generator=g) < math.exp(eps) / (1 + math.exp(eps))
    output = (member == keep).double() + 0.5 * torch.rand(runs, n, generator=g)
    ranked = torch.gather(member, 1, output.argsort(1, descending=True))
    return ranked[:, :k_plus].sum(1) + (~ranked[:, n - k_minus:]).sum(1)


def exceed_rate(correct: torch.Tensor, r: int, n: int, eps: float, log_factor: float) -> float:
    eps_of = {v: _eps_from_counts(r, v, n, 0.0, 0.05, log_factor) for v in correct.unique().tolist()}
    return sum(eps_of[v] > eps for v in correct.tolist()) / correct.numel()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n, eps = args.n, args.eps
    q = math.exp(eps) / (1 + math.exp(eps))
    log_factor = plan_log_factor(n, n // 2)
    print(f"N = {n}, eps = {eps}, {args.runs} plans per design; rate at which the 95% bound exceeds eps")
    head = f"{'k+':>5}{'k-':>5}{'size':>8}{'indep.':>9}{'half, paper':>13}{'half, plan':>12}  correct: mean, var (binomial var)"
    print(head)
    print("-" * len(head))
    g = torch.Generator().manual_seed(args.seed)
    for k_plus, k_minus in ((100, 0), (200, 0), (100, 100), (300, 300), (500, 500)):
        r = k_plus + k_minus
        critical = next(v for v in range(r + 2) if v > r or p_value(r, v, eps) <= 0.05)
        size = sum(math.comb(r, v) * q**v * (1 - q) ** (r - v) for v in range(critical, r + 1))
        indep = correct_guesses(args.runs, n, eps, k_plus, k_minus, False, g)
        half = correct_guesses(args.runs, n, eps, k_plus, k_minus, True, g)
        print(f"{k_plus:>5}{k_minus:>5}{size:>8.2%}{exceed_rate(indep, r, n, eps, 0.0):>9.2%}"
              f"{exceed_rate(half, r, n, eps, 0.0):>13.2%}{exceed_rate(half, r, n, eps, log_factor):>12.2%}"
              f"  {half.double().mean():.1f}, {half.double().var():.1f} ({r * q * (1 - q):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
