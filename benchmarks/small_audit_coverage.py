"""How small an audit can be before its AUC interval stops meaning what it says: the coverage
of the report's 95% AUC interval (DeLong, `attacks.intervals.delong_auc_interval`) and how often
an attack with no signal at all reports an interval that excludes 0.5, at audit sizes N (half
members, half non-members, as the plan draws them).

    python benchmarks/small_audit_coverage.py               # N = 4 ... 400, 2,000 audits each
    python benchmarks/small_audit_coverage.py --reps 200    # quicker, noisier

Scores are binormal: non-members N(0, 1), members N(d, 1), so the true AUC is Phi(d / sqrt 2);
d = 0 is an attack that knows nothing (true AUC 0.5), d = 0.5 a weak one (0.638, about what
the digits audits measure), d = 2 a strong one (0.921). "covers" is the fraction of audits
whose interval holds the true AUC (95% is honest); "degenerate" the fraction whose interval
has zero width or is undefined (nan: one class has a single sample).
"""

from __future__ import annotations

import argparse
import math

import torch

from attacks.intervals import delong_auc_interval


def run(sizes, shifts, reps: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in shifts:
        true_auc = 0.5 * (1 + math.erf(d / 2))  # Phi(d / sqrt 2)
        for n in sizes:
            n_in = n // 2
            is_member = torch.zeros(n, dtype=torch.bool)
            is_member[:n_in] = True
            covers = degenerate = excludes_half = 0
            for _ in range(reps):
                scores = torch.randn(n, generator=g, dtype=torch.float64) + d * is_member
                lo, hi = delong_auc_interval(scores, is_member)
                if math.isnan(lo) or hi - lo == 0:
                    degenerate += 1
                if not math.isnan(lo):
                    covers += lo <= true_auc <= hi
                    excludes_half += not (lo <= 0.5 <= hi)
            rows.append({"d": d, "true_auc": true_auc, "n": n, "covers": covers / reps,
                         "degenerate": degenerate / reps, "excludes_0.5": excludes_half / reps})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 10, 20, 50, 100, 200, 400])
    p.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.5, 2.0])
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(f"{'d':>4} {'true AUC':>8} {'N':>5} {'covers':>7} {'degenerate':>10} {'excludes 0.5':>12}")
    for r in run(a.sizes, a.shifts, a.reps, a.seed):
        print(f"{r['d']:>4.1f} {r['true_auc']:>8.3f} {r['n']:>5} {r['covers']:>7.1%} {r['degenerate']:>10.1%} "
              f"{r['excludes_0.5']:>12.1%}")


if __name__ == "__main__":
    main()
