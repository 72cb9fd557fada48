"""The feature attacks of attacks/access.py on synthetic features whose answer is known.

    python benchmarks/access_synthetic.py              # N = 3,000, K = 4 and 8, 3 seeds (a few seconds)

Each model m gives sample j the F features x = base_j + shift_j * [m trained on j] + noise,
noise ~ N(0, C) per model and sample, base_j ~ N(0, 4 I) (the sample's own level, which
calibration removes). The plan is the tool's: the target holds a random half of the samples,
the K references come in complementary pairs (K/2 IN and K/2 OUT per sample). Printed: the
mean AUC over the seeds of gaussian_lr ("shared", "diagonal") and reference_classifier in
three settings:

- same shift: shift_j = (1, 1, 1, 1) for every sample, C = I;
- correlated: shift_j = (0.4, -0.4), C = [[1, 0.95], [0.95, 1]] (members move across the
  correlation, where the noise is small);
- sample-dependent: shift_j = (+-1, +-1, +-1, +-1), signs drawn per sample, C = I.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attacks import gaussian_lr, reference_classifier, roc_metrics  # noqa: E402

ATTACKS = {
    "gaussian shared": lambda x, r, i: gaussian_lr(x, r, i, "shared"),
    "gaussian diagonal": lambda x, r, i: gaussian_lr(x, r, i, "diagonal"),
    "classifier": lambda x, r, i: reference_classifier(x, r, i),
}
SETTINGS = {
    "same shift": ([1.0] * 4, None, False),
    "correlated": ([0.4, -0.4], [[1, 0.95], [0.95, 1]], False),
    "sample-dependent": ([1.0] * 4, None, True),
}


def synthetic(seed, n, k, shift, cov, random_sign):
    g = torch.Generator().manual_seed(seed)
    target_in = torch.rand(n, generator=g) < 0.5
    rows = []
    for _ in range(k // 2):
        a = torch.rand(n, generator=g) < 0.5
        rows += [a, ~a]
    ref_in = torch.stack(rows)
    f = len(shift)
    shift = torch.tensor(shift, dtype=torch.float64)[:, None].expand(f, n)
    if random_sign:
        shift = shift * torch.where(torch.rand(f, n, generator=g) < 0.5, -1.0, 1.0).double()
    cov = torch.eye(f, dtype=torch.float64) if cov is None else torch.tensor(cov, dtype=torch.float64)
    member = torch.cat([target_in[None], ref_in]).double()[:, None, :]          # [1 + K, 1, N]
    noise = torch.einsum("ij,mjn->min", torch.linalg.cholesky(cov),
                         torch.randn(1 + k, f, n, generator=g, dtype=torch.float64))
    x = 2 * torch.randn(f, n, generator=g, dtype=torch.float64)[None] + shift[None] * member + noise
    return x[0], x[1:], ref_in, target_in


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"N = {args.n}, mean AUC over {args.seeds} seeds")
    print(f"{'K':>3} {'setting':<18}" + "".join(f"{a:>19}" for a in ATTACKS))
    for k in args.k:
        for name, (shift, cov, random_sign) in SETTINGS.items():
            aucs = {a: [] for a in ATTACKS}
            for seed in range(args.seeds):
                x, r, ref_in, y = synthetic(seed, args.n, k, shift, cov, random_sign)
                for a, attack in ATTACKS.items():
                    aucs[a].append(roc_metrics(attack(x, r, ref_in), y)["auc"])
            print(f"{k:>3} {name:<18}" + "".join(f"{statistics.mean(v):>19.3f}" for v in aucs.values()))


if __name__ == "__main__":
    main()
