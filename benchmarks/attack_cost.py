"""Wall time of each attack from nothing to its numbers: the models it needs trained, and
its own audit (signal passes, an auxiliary model, the math), side by side in one run.

    python benchmarks/attack_cost.py                       # digits default (SNN T=4, K=4)
    python benchmarks/attack_cost.py --flags --data.dataset fashion_mnist --data.audit_size 4000 \
        --data.population 1000 --model.T 4                 # the Fashion-MNIST study's SNN T=4
    python benchmarks/attack_cost.py --out docs/results/attack_cost.json

1. Trains the K references and then the target of one run, each model alone
   (`run.py fit --data.model_index k`), timed one by one. Every model records its
   trajectory (`trajectory` among the callback's attacks), so these times include the
   trajectory attack's recording pass per epoch (benchmarks/trajectory_overhead.py
   measures that share).
2. For each attack: a copy of the run without any signal cache or QMIA model, audited by
   `run.py audit --attacks [<attack>]` for the main target, timed (the target's and the
   references' signal passes, QMIA's regression model, the scoring and the report).
3. An attack's wall time is its references' training (how many the audit read, times the
   mean reference training time measured in 1) plus its audit. The target's own training
   is common to every attack and left out. The counted costs (models trained, inference
   passes) are the report's `attack_costs`.

Run it with nothing else heavy on the machine: the numbers are seconds on this machine, and
their ratios are what carries over to another one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages live at the repo root

from training.cli import run_cli

ATTACKS = ("rmia_offline", "lira_online", "qmia", "trajectory")
QUIET = ["--trainer.enable_progress_bar", "false"]


def train(rd: Path, flags: list[str], num_references: int) -> dict[int, float]:
    """Each model of the run trained alone, references first: {model: seconds}."""
    seconds = {}
    for k in [*range(1, num_references + 1), 0]:
        start = time.perf_counter()
        code = run_cli(["fit", "--run_dir", str(rd), "--data.model_index", str(k), *flags, *QUIET,
                        "--trainer.callbacks.attacks", "[rmia_offline, trajectory]"], print_tables=False)
        seconds[k] = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"error: training model {k} failed (exit {code})")
    return seconds


def fresh_copy(rd: Path, to: Path) -> Path:
    """The run without its signal caches and QMIA models: an audit that computes everything."""
    shutil.copytree(rd, to)
    for folder in [*to.glob("model_*/signals"), *to.glob("model_*/qmia"), to / "audit"]:
        shutil.rmtree(folder, ignore_errors=True)
    return to


def audit(rd: Path, flags: list[str], attack: str, rounds: int, tmp: Path) -> tuple[list[float], dict]:
    times, report = [], {}
    for r in range(rounds):
        copy = fresh_copy(rd, tmp / f"{attack}_{r}")
        start = time.perf_counter()
        code = run_cli(["audit", "--run_dir", str(copy), *flags, "--attacks", f"[{attack}]",
                        "--report_dir", str(copy / "audit")], print_tables=False)
        times.append(time.perf_counter() - start)
        if code != 0:
            raise SystemExit(f"error: the {attack} audit failed (exit {code})")
        report = json.loads((copy / "audit" / "report.json").read_text())
        shutil.rmtree(copy)
    return times, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                        help="run.py flags of the run (after every other option), e.g. --model.T 4")
    parser.add_argument("--num_references", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="audits per attack (median reported)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated registered attacks")
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.num_references < 2 or args.rounds < 1:
        parser.error("--num_references must be >= 2 and --rounds >= 1")
    flags = ["--data.num_references", str(args.num_references), *args.flags]
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rd = tmp / "run"
        trained = train(rd, flags, args.num_references)
        ref_s = statistics.mean(v for k, v in trained.items() if k != 0)
        rows = {}
        for attack in attacks:
            times, report = audit(rd, flags, attack, args.rounds, tmp)
            cost = report["attack_costs"].get(attack, {})
            refs = len(report["settings"]["references"]) if cost.get("models_trained", 0) and attack != "qmia" else 0
            audit_s = statistics.median(times)
            rows[attack] = {**cost, "references_trained": refs, "references_seconds": refs * ref_s,
                            "audit_seconds": audit_s, "audit_seconds_all": times,
                            "wall_seconds": refs * ref_s + audit_s,
                            "auc": (report["attacks"].get(attack) or {}).get("auc")}
    print(f"training, each model alone: references {ref_s:.1f} s each (mean of {len(trained) - 1}), "
          f"target {trained[0]:.1f} s (with its per-epoch audit)")
    print(f"{'attack':<14}{'models':>8}{'passes':>8}{'refs s':>10}{'audit s':>10}{'wall s':>10}{'x qmia':>9}{'AUC':>8}")
    base = rows.get("qmia", {}).get("wall_seconds")
    for attack, r in rows.items():
        ratio = f"{r['wall_seconds'] / base:.1f}" if base else ""
        auc = f"{r['auc']:.3f}" if r["auc"] is not None else "n/a"
        print(f"{attack:<14}{r.get('models_trained', 0):>8}{r.get('inference_passes', 0):>8}"
              f"{r['references_seconds']:>10.1f}{r['audit_seconds']:>10.1f}{r['wall_seconds']:>10.1f}{ratio:>9}{auc:>8}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"flags": flags, "training_seconds": {str(k): v for k, v in trained.items()},
                                              "reference_seconds_mean": ref_s, "attacks": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
