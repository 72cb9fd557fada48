"""How small an audit can be before its numbers stop meaning what they say; the minimums the
tool enforces (`datamodules/plan.py`: MIN_AUDIT_SIZE, MIN_PER_CLASS, MIN_POPULATION) are read
off these tables, and docs/limits.md gives them.

1. The coverage of the report's 95% AUC interval (DeLong, `attacks.intervals.delong_auc_interval`)
   and how often an attack with no signal at all reports an interval that excludes 0.5, at audit
   sizes N (half members, half non-members, as the plan draws them).
2. The same for unbalanced audits (`--splits`, members:non-members), as a random `audit_subset`
   draws them: what matters is the smaller of the two counts.
3. The population Z: the target's test accuracy is measured on it, and RMIA scoring each query
   on its own (`rmia_per_query`) compares with its Z samples. For each Z, how far the measured
   accuracy strays from the true one, and RMIA's AUC and TPR at 1% FPR against those of
   the same scores with an unlimited population.

    python benchmarks/small_audit_coverage.py               # all three, 2,000 repetitions each
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

from attacks import rmia, roc_metrics
from attacks.intervals import delong_auc_interval


def run(sizes, shifts, reps: int, seed: int, splits=None) -> list[dict]:
    """Coverage rows for each d and each audit: N (half members) or a (members, non-members) split."""
    g = torch.Generator().manual_seed(seed)
    audits = [(n // 2, n - n // 2) for n in sizes] if splits is None else list(splits)
    rows = []
    for d in shifts:
        true_auc = 0.5 * (1 + math.erf(d / 2))  # Phi(d / sqrt 2)
        for n_in, n_out in audits:
            n = n_in + n_out
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
            rows.append({"d": d, "true_auc": true_auc, "n": n, "n_in": n_in, "n_out": n_out, "covers": covers / reps,
                         "degenerate": degenerate / reps, "excludes_0.5": excludes_half / reps})
    return rows


def population_accuracy(populations, accuracies, reps: int, seed: int) -> list[dict]:
    """The test accuracy measured on Z samples (each right with probability `acc`): the
    central 95% of the measured values, and how often it misses the true one by more than 0.1."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for acc in accuracies:
        for z in populations:
            measured = (torch.rand(reps, z, generator=g, dtype=torch.float64) < acc).double().mean(1)
            lo, hi = torch.quantile(measured, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
            rows.append({"acc": acc, "z": z, "lo": lo, "hi": hi, "off_by_0.1": float(((measured - acc).abs() > 0.1)
                                                                                       .double().mean())})
    return rows


def population_rmia(populations, d: float, n: int, queries: int, reps: int, seed: int) -> list[dict]:
    """RMIA with `rmia_per_query` (each query scored against the population, the Q scores
    averaged) on binormal log-ratios: per query, non-members and the population N(0, 1),
    members N(d, 1); one OUT reference answering 1/2 everywhere, so ratio = 2 p_target. The
    same scores with an unlimited population are the mean of Phi(log-ratio) (the exact CDF)."""
    g = torch.Generator().manual_seed(seed)
    is_member = torch.zeros(n, dtype=torch.bool)
    is_member[: n // 2] = True
    normal = torch.distributions.Normal(0.0, 1.0)
    rows = []
    for z in populations:
        auc, tpr, auc_inf, tpr_inf = [], [], [], []
        for _ in range(reps):
            x = torch.randn(queries, n, generator=g, dtype=torch.float64) + d * is_member
            xz = torch.randn(queries, z, generator=g, dtype=torch.float64)
            p, pz = 0.5 * torch.sigmoid(x), 0.5 * torch.sigmoid(xz)  # ratio 2p: monotone in the log-ratio
            s = rmia(p, torch.full((1, queries, n), 0.5, dtype=torch.float64), pz,
                     torch.full((1, queries, z), 0.5, dtype=torch.float64), offline_a=1.0, per_query=True)
            m, m_inf = roc_metrics(s, is_member), roc_metrics(normal.cdf(x).mean(0), is_member)
            auc.append(m["auc"]); tpr.append(m["tpr@1%fpr"])
            auc_inf.append(m_inf["auc"]); tpr_inf.append(m_inf["tpr@1%fpr"])
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        rows.append({"z": z, "auc": mean(auc), "auc_inf": mean(auc_inf), "tpr": mean(tpr), "tpr_inf": mean(tpr_inf)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 10, 20, 40, 50, 100, 200, 400])
    p.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.5, 2.0])
    p.add_argument("--splits", nargs="+", default=["25:25", "20:30", "15:35", "20:20", "20:180", "10:190"],
                   help="members:non-members audits for the unbalanced table (d = 0)")
    p.add_argument("--populations", type=int, nargs="+", default=[1, 10, 25, 50, 100, 200, 1000])
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(f"{'d':>4} {'true AUC':>8} {'N':>5} {'covers':>7} {'degenerate':>10} {'excludes 0.5':>12}")
    for r in run(a.sizes, a.shifts, a.reps, a.seed):
        print(f"{r['d']:>4.1f} {r['true_auc']:>8.3f} {r['n']:>5} {r['covers']:>7.1%} {r['degenerate']:>10.1%} "
              f"{r['excludes_0.5']:>12.1%}")
    splits = [tuple(int(v) for v in s.split(":")) for s in a.splits]
    print(f"\nunbalanced audits, d = 0\n{'members':>7} {'non-members':>11} {'covers':>7} {'excludes 0.5':>12}")
    for r in run(None, [0.0], a.reps, a.seed, splits):
        print(f"{r['n_in']:>7} {r['n_out']:>11} {r['covers']:>7.1%} {r['excludes_0.5']:>12.1%}")
    print(f"\ntest accuracy on Z population samples\n{'true':>5} {'Z':>5} {'central 95% of measured':>24} "
          f"{'off by > 0.1':>12}")
    for r in population_accuracy(a.populations, [0.5, 0.9], a.reps, a.seed):
        print(f"{r['acc']:>5.2f} {r['z']:>5} {'[' + format(r['lo'], '.3f') + ', ' + format(r['hi'], '.3f') + ']':>24} "
              f"{r['off_by_0.1']:>12.1%}")
    reps = max(1, a.reps // 10)
    print(f"\nRMIA per query (Q = 2, d = 1, N = 2,000, {reps} audits): mean over audits, population Z against "
          f"unlimited\n{'Z':>5} {'AUC':>6} {'AUC (Z inf)':>11} {'TPR@1%FPR':>9} {'(Z inf)':>8}")
    for r in population_rmia(a.populations, 1.0, 2000, 2, reps, a.seed):
        print(f"{r['z']:>5} {r['auc']:>6.3f} {r['auc_inf']:>11.3f} {r['tpr']:>9.3f} {r['tpr_inf']:>8.3f}")


if __name__ == "__main__":
    main()
