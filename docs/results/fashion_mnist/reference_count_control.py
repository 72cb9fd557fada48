"""Control for this folder's README, "Appendix: the biased audit, with each rotated target's
complement": what one reference fewer costs a target that has no complement.

Model 0 of every entry and seed of the Fashion-MNIST study is audited with all 4 of its
references, then with 3 (leaving out model 1, 2 or 4 in turn: one unpaired reference plus one
pair, the structure a rotated target has without its complement). The difference is the
reference-count effect alone, with no complement involved. It needs the study's trained models
and signal caches (run `python run.py study --config configs/study/fashion_mnist.yaml` first) and
only reruns attack math (1 min 17 s on 2 cores). The reports go to a temporary folder; the
run directories are not written.

    python docs/results/fashion_mnist/reference_count_control.py

Leaving a reference out is not an option of the tool (the audit uses every finished model), so
this script narrows `Audit`'s reference list for model 0 itself.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import run  # noqa: E402
from audit import engine  # noqa: E402
from study import load_study  # noqa: E402
from study.runner import entry_argv  # noqa: E402

ATTACKS = ("rmia_offline", "rmia_online", "lira_online")
DROPS = (None, 1, 2, 4)  # None: all 4 references


def audit_model_0(argv: list[str], drop: int | None, out: Path) -> dict[str, float]:
    original = engine.Audit.__init__

    def narrowed(self, dm, target, settings, ranks=None, refs=None):
        original(self, dm, target, settings, ranks, refs)
        if target == 0 and drop in self.refs:
            original(self, dm, target, settings, ranks, [k for k in self.refs if k != drop])

    engine.Audit.__init__ = narrowed
    try:
        code = run.main(["audit", *argv[:-2], "--queries", "[plain]", "--attacks", f"[{', '.join(ATTACKS)}]",
                         "--targets", "[0]", "--run_dir", argv[-1], "--report_dir", str(out),
                         "--trainer.enable_progress_bar", "false"])
    finally:
        engine.Audit.__init__ = original
    if code != 0:
        raise SystemExit(f"audit of {argv[-1]} failed (exit {code})")
    report = json.loads((out / "report.json").read_text())
    assert len(report["settings"]["references"]) == (4 if drop is None else 3)
    return {a: report["attacks"][a]["auc"] for a in ATTACKS}


def main() -> None:
    import os

    os.chdir(ROOT)
    spec = load_study("configs/study/fashion_mnist.yaml")
    entries = [e for e in spec["entries"] if "--references" not in e["args"]]
    auc: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in spec["seeds"]:
            for e in entries:
                argv = entry_argv(spec, e, seed)
                for drop in DROPS:
                    out = Path(tmp) / f"{seed}_{e['name']}_{drop}"
                    auc[e["name"], seed, drop] = audit_model_0(argv, drop, out)
    print("\nModel 0, AUC with 4 references -> with 3 (mean over leaving out model 1, 2, 4), mean over seeds")
    print(f"{'entry':10s} {'attack':13s} {'4 refs':>7s} {'3 refs':>7s} {'diff':>7s}  per seed")
    for e in entries:
        for a in ATTACKS:
            full = [auc[e["name"], s, None][a] for s in spec["seeds"]]
            three = [statistics.mean(auc[e["name"], s, d][a] for d in DROPS[1:]) for s in spec["seeds"]]
            diffs = [t - f for t, f in zip(three, full)]
            print(f"{e['name']:10s} {a:13s} {statistics.mean(full):7.3f} {statistics.mean(three):7.3f} "
                  f"{statistics.mean(diffs):+7.3f}  {', '.join(f'{d:+.3f}' for d in diffs)}")


if __name__ == "__main__":
    main()
