"""RMIA: sorted O((N + Z) log Z) scoring vs the pairwise N x Z definition.

    python benchmarks/rmia.py                      # N = Z = 50,000, K = 4
    python benchmarks/rmia.py --n 5000 --z 2000    # quicker

Both paths score the same synthetic probabilities, online and offline; the
pairwise one evaluates ratio(x) / ratio(z) > gamma for every (x, z) pair in
float64, chunked over x to bound memory. Scores must be identical bit for bit
(``attacks.rmia`` with ``tie_break=False``; the tie-break is timed separately).

Single-threaded by default: this compares algorithms, and on a shared 2-core
machine OpenMP spin-waits distort small ops (measured here while another
process held a core: the sorted path took 11 ms with 1 thread, 470 ms with 2).
Chunks of 16 rows (6.4 MB at Z = 50,000) were the fastest pairwise setting
measured; 256 rows ran 3x slower (fresh mmap pages per chunk).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attacks import rmia  # noqa: E402


def synthetic(n: int, z: int, k: int, seed: int = 0):
    """Beta-distributed probabilities; the target gives its members (half) a boost."""
    g = torch.Generator().manual_seed(seed)
    beta = torch.distributions.Beta(torch.tensor(4.0), torch.tensor(2.0))
    torch.manual_seed(seed)
    member = torch.rand(n, generator=g) < 0.5
    ref_in = torch.zeros(k, n, dtype=torch.bool)
    for i in range(0, k, 2):  # complementary pairs, as in the membership plan
        ref_in[i] = torch.rand(n, generator=g) < 0.5
        if i + 1 < k:
            ref_in[i + 1] = ~ref_in[i]
    refs = beta.sample((k, n)).double()
    refs = torch.where(ref_in, refs ** 0.5, refs)
    target = beta.sample((n,)).double()
    target = torch.where(member, target ** 0.5, target)
    return target, refs, beta.sample((z,)).double(), beta.sample((k, z)).double(), ref_in


def pairwise(target, refs, target_z, refs_z, ref_in, offline_a, gamma=1.0, chunk=16):
    """The definition, N x Z comparisons in chunks of rows."""
    tiny = torch.finfo(torch.float64).tiny
    if offline_a is None:
        pr_x, pr_z = refs.mean(0), refs_z.mean(0)
    else:
        out = (~ref_in).double()
        a = float(offline_a)
        pr_x = (1 + a) / 2 * ((refs * out).sum(0) / out.sum(0)) + (1 - a) / 2
        pr_z = (1 + a) / 2 * refs_z.mean(0) + (1 - a) / 2
    r_x, r_z = target / pr_x.clamp(min=tiny), target_z / pr_z.clamp(min=tiny)
    count = torch.empty(r_x.numel(), dtype=torch.int64)
    for i in range(0, r_x.numel(), chunk):
        count[i:i + chunk] = (r_x[i:i + chunk, None] / r_z[None, :] > gamma).sum(1)
    return count.double() / r_z.numel()


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--z", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=16, help="pairwise rows per chunk (memory: chunk x Z x 9 bytes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both paths")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = synthetic(args.n, args.z, args.k)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64")
    head = f"{'mode':<13}{'N':>8}{'Z':>8}{'K':>4}{'pairwise s':>12}{'sorted s':>10}{'speed-up':>10}  identical  {'tie-break s':>11}"
    print(head)
    print("-" * len(head))
    all_same = True
    for mode, a in (("online", None), ("offline a=.3", 0.3)):
        t_pair, s_pair = timed(lambda: pairwise(*data, offline_a=a, chunk=args.chunk))
        t_sort, s_sort = timed(lambda: rmia(*data, offline_a=a, tie_break=False), repeat=3)
        t_tie, s_tie = timed(lambda: rmia(*data, offline_a=a), repeat=3)
        same = torch.equal(s_pair, s_sort)
        assert (s_tie - s_sort).abs().max() < 1 / (2 * args.z)
        all_same &= same
        print(f"{mode:<13}{args.n:>8}{args.z:>8}{args.k:>4}{t_pair:>12.2f}{t_sort:>10.4f}{t_pair / t_sort:>9.0f}x"
              f"  {'yes' if same else 'NO':<9}  {t_tie:>11.4f}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
