"""Audit math at LiRA scale: every attack the audit engine runs, with the report's intervals and
eps_lb, on synthetic signals of K references, N audit samples, Z population samples, Q queries.

    python benchmarks/audit_scale.py                 # K = 256, N = 60,000, Z = 10,000, Q = 18, and the sweeps
    python benchmarks/audit_scale.py --quick         # small sizes, cases side by side: checks the script works
    python benchmarks/audit_scale.py --k 256 --n 60000 --no-sweep   # one case

Goal: at K = 256, N = 60,000, Z = 10,000, Q = 18, all attacks plus intervals in under 5 minutes
and under 8 GB (peak resident memory of the process, the signals included), on 2 threads; time
at most linear in K and N log N in N.

Each case runs in a fresh process, so its peak resident memory (getrusage's ru_maxrss) is its
own. It builds the signals as the signal cache hands them to the engine (per model a dict of
float32 rescaled logits [Q, N] and [Q, Z], bool `correct`, and the float64 probabilities that
`with_probability` adds), on the plan `make_plan` draws (target row 0, K references in
complementary pairs). Then it calls what `Audit.score` and `Audit.summaries` call:
`audit.scoring.evaluate` (score_attacks: the seven attacks; roc_metrics per attack) and
`audit.stats.attack_summaries` (DeLong and bootstrap intervals, B = 1,000, and eps_lb per
attack), with the default AuditSettings. The functions are timed by wrapping them where the
engine looks them up, so every number comes from the one engine call.

Synthetic signals: a rescaled logit per sample d ~ N(2, 1.5^2), +0.8 for a model that trained
on the sample, +N(0, 0.7^2) per model and sample, +N(0, 0.3^2) per query.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_SECONDS = 300.0
GOAL_GB = 8.0
FULL = dict(k=256, n=60_000, z=10_000, q=18)
QUICK = dict(k=8, n=400, z=100, q=2)


def peak_gb() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def current_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def build(k: int, n: int, z: int, q: int, seed: int = 0):
    """(is_member [N], ref_in [K, N], target signals, [reference signals]) as the engine holds them."""
    import torch

    from audit.signals import with_probability
    from datamodules.plan import make_plan

    plan = make_plan("synthetic", n + z, k, seed, population=z, audit_size=n)
    g = torch.Generator().manual_seed(seed)
    hard_x = 2 + 1.5 * torch.randn(n, generator=g)
    hard_z = 2 + 1.5 * torch.randn(z, generator=g)
    models = []
    for m in range(k + 1):
        phi_x = hard_x + 0.8 * plan.membership[m] + 0.7 * torch.randn(n, generator=g) \
            + 0.3 * torch.randn(q, n, generator=g)
        phi_z = hard_z + 0.7 * torch.randn(z, generator=g) + 0.3 * torch.randn(q, z, generator=g)
        models.append(with_probability({"audit/rescaled_logit": phi_x, "audit/correct": phi_x > 0,
                                        "population/rescaled_logit": phi_z, "population/correct": phi_z > 0}))
    return plan.membership[0], plan.membership[1:], models[0], models[1:]


class Timer:
    """Wraps module-level functions so each call's seconds are recorded under the function's name."""

    def __init__(self):
        self.calls: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner, name: str, key: str | None = None) -> None:
        """Time `owner.name` (a module's function, or a class's method) under `key` (default: name)."""
        fn = getattr(owner, name)
        key = key or name

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls[key].append(time.perf_counter() - t0)

        setattr(owner, name, timed)


def run_case(k: int, n: int, z: int, q: int, bootstrap: int = 1000, threads: int = 2) -> dict:
    """One case in this process: build, then the engine's scoring and summaries, timed."""
    import torch

    import audit.scoring as scoring
    import audit.stats as stats
    from audit.attacks import REGISTRY
    from audit.settings import AuditSettings

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    is_member, ref_in, target, references = build(k, n, z, q)
    build_s = time.perf_counter() - t0
    inputs_gb = current_gb()
    settings = AuditSettings(bootstrap=bootstrap).check()
    names, skipped = scoring.runnable(settings.attacks, ref_in, list(range(1, k + 1)))
    assert not skipped, skipped
    timer = Timer()
    for fn in ("score_attacks", "roc_metrics"):
        timer.wrap(scoring, fn)
    for name in names:  # each registered attack's scoring function, timed under its name
        timer.wrap(REGISTRY[name], "score", key=name)
    for fn in ("roc_intervals", "eps_lower_bound"):
        timer.wrap(stats, fn)
    t0 = time.perf_counter()
    metrics = scoring.evaluate(names, target, references, ref_in, is_member, **settings.score_kwargs)
    summaries, _ = stats.attack_summaries(metrics, is_member, settings, num_nonmembers=int((~is_member).sum()))
    total_s = time.perf_counter() - t0
    # score_attacks calls each attack's score once, in the order of `names`; evaluate then
    # calls roc_metrics per name and attack_summaries roc_intervals and eps_lower_bound per name
    attack_fns = [timer.calls[name][0] for name in names]
    per_attack = {name: {"score_s": s, "roc_s": r, "intervals_s": ci, "eps_s": e} for name, s, r, ci, e in
                  zip(names, attack_fns, timer.calls["roc_metrics"], timer.calls["roc_intervals"],
                      timer.calls["eps_lower_bound"])}
    return {
        "k": k, "n": n, "z": z, "q": q, "bootstrap": bootstrap, "threads": torch.get_num_threads(),
        "build_s": build_s, "inputs_gb": inputs_gb,
        "prepare_s": sum(timer.calls["score_attacks"]) - sum(attack_fns),
        "scores_s": sum(attack_fns), "roc_s": sum(timer.calls["roc_metrics"]),
        "intervals_s": sum(timer.calls["roc_intervals"]), "eps_s": sum(timer.calls["eps_lower_bound"]),
        "total_s": total_s, "peak_gb": peak_gb(), "per_attack": per_attack,
        "auc": {name: summaries[name]["auc"] for name in names},
    }


def run_in_child(case: dict, bootstrap: int, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(case),
           "--bootstrap", str(bootstrap), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(r: dict) -> str:
    return (f"{r['k']:>4} {r['n']:>7,} {r['z']:>7,} {r['q']:>3}  {r['build_s']:>7.1f}  {r['inputs_gb']:>6.2f}  "
            f"{r['prepare_s']:>7.2f}  {r['scores_s']:>7.2f}  {r['roc_s']:>6.2f}  {r['intervals_s']:>7.2f}  "
            f"{r['eps_s']:>5.2f}  {r['total_s']:>7.2f}  {r['peak_gb']:>6.2f}")


HEAD = (f"{'K':>4} {'N':>7} {'Z':>7} {'Q':>3}  {'build s':>7}  {'in GB':>6}  {'stack s':>7}  {'score s':>7}  "
        f"{'roc s':>6}  {'CIs s':>7}  {'eps s':>5}  {'total s':>7}  {'peak GB':>6}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (K 4-8, N 200-400): checks the script works")
    ap.add_argument("--k", type=int, help="references of the main case (default 256)")
    ap.add_argument("--n", type=int, help="audit samples of the main case (default 60,000)")
    ap.add_argument("--z", type=int, help="population samples (default 10,000)")
    ap.add_argument("--q", type=int, help="queries (default 18)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (AuditSettings' default)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2: this machine's cores)")
    ap.add_argument("--no-sweep", action="store_true", help="only the main case, not the K and N sweeps")
    ap.add_argument("--json", type=Path, help="also write every case's figures here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(**json.loads(args.child), bootstrap=args.bootstrap, threads=args.threads)))
        return 0
    base = dict(QUICK if args.quick else FULL)
    base.update({key: v for key in ("k", "n", "z", "q") if (v := getattr(args, key)) is not None})
    bootstrap = min(args.bootstrap, 100) if args.quick else args.bootstrap
    if args.no_sweep:
        ks, ns = [base["k"]], [base["n"]]
    elif args.quick:
        ks, ns = [4, base["k"]], [base["n"] // 2, base["n"]]
    else:  # K from 16 to 256 at the main N; N from 6,000 to 60,000 at the main K
        ks = [kk for kk in (16, 32, 64, 128, 256) if kk < base["k"]] + [base["k"]]
        ns = [nn for nn in (6_000, 15_000, 30_000) if nn < base["n"]] + [base["n"]]
    cases = [dict(base, k=kk) for kk in ks] + [dict(base, n=nn) for nn in ns[:-1]]
    import torch

    print(f"torch {torch.__version__}, {args.threads} thread(s), B = {bootstrap}; one process per case; "
          "times in seconds, memory in GiB (in = resident after building the signals, peak = ru_maxrss)")
    print(HEAD)
    print("-" * len(HEAD))
    if args.quick:  # the children side by side: quick checks that the script works, its times measure nothing
        with ThreadPoolExecutor(len(cases)) as pool:
            results = list(pool.map(lambda case: run_in_child(case, bootstrap, args.threads), cases))
        for r in results:
            print(row(r))
    else:  # one at a time, so each case has the machine to itself
        results = []
        for case in cases:
            results.append(run_in_child(case, bootstrap, args.threads))
            print(row(results[-1]), flush=True)
    main_case = next(r for r in results if r["k"] == base["k"] and r["n"] == base["n"])
    print(f"\nper attack at K = {main_case['k']}, N = {main_case['n']:,} (seconds; AUC of the synthetic audit)")
    print(f"{'attack':<16} {'score':>7} {'roc':>6} {'CIs':>7} {'eps':>6}  {'AUC':>6}")
    for name, t in main_case["per_attack"].items():
        print(f"{name:<16} {t['score_s']:>7.2f} {t['roc_s']:>6.2f} {t['intervals_s']:>7.2f} {t['eps_s']:>6.2f}  "
              f"{main_case['auc'][name]:>6.3f}")
    by_k = sorted((r for r in results if r["n"] == base["n"]), key=lambda r: r["k"])
    by_n = sorted((r for r in results if r["k"] == base["k"]), key=lambda r: r["n"])
    if len(by_k) > 1:
        lo, hi = by_k[0], by_k[-1]
        print(f"\nK {lo['k']} -> {hi['k']} ({hi['k'] / lo['k']:.0f}x): total time x{hi['total_s'] / lo['total_s']:.2f}, "
              f"attack scoring (stack + scores) x{(hi['prepare_s'] + hi['scores_s']) / (lo['prepare_s'] + lo['scores_s']):.2f}")
    if len(by_n) > 1:
        lo, hi = by_n[0], by_n[-1]
        nlogn = hi["n"] * math.log(hi["n"]) / (lo["n"] * math.log(lo["n"]))
        print(f"N {lo['n']:,} -> {hi['n']:,} (N log N x{nlogn:.1f}): total time x{hi['total_s'] / lo['total_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    met = main_case["total_s"] < GOAL_SECONDS and main_case["peak_gb"] < GOAL_GB
    print(f"\ngoal at K = {main_case['k']}, N = {main_case['n']:,}: total {main_case['total_s']:.1f} s "
          f"(< {GOAL_SECONDS:.0f}), peak {main_case['peak_gb']:.2f} GiB (< {GOAL_GB:.0f}): {'met' if met else 'MISSED'}")
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
