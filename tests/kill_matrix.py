"""Kill `run.py fit` with SIGKILL at six moments, rerun the same command, and compare the
rerun's report.json with an uninterrupted run's, byte for byte.

    OMP_NUM_THREADS=1 python tests/kill_matrix.py              # about 3 minutes on 2 cores
    python tests/kill_matrix.py --keep /tmp/kill_matrix         # keep the run directories

The moments are fault-injection points (core/faults.py, SNN_MIA_KILL_AT): the process kills
itself there exactly as `kill -9` would, so the test does not depend on timing. One thread
(OMP_NUM_THREADS=1) makes the arithmetic itself repeatable. Exit status 0 when every rerun's
report equals the uninterrupted run's; tests/test_kill_matrix.py runs this script.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["fit", "--data.num_references", "2", "--trainer.max_epochs", "3", "--model.width", "0.5",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# moment -> the injection point where the process kills itself (a glob over the point names)
MOMENTS = {
    "during a reference (model_1, epoch 1, batch 3)": "batch:model_1:1:3",
    "during the target (model_0, epoch 1, batch 5)": "batch:model_0:1:5",
    "during the final audit (last epoch's query pass)": "audit:model_0:epoch_2",
    "during the report write (report.json)": "write:*/audit/report.json",
    "after report.json, before roc.png": "write:*/audit/roc.png",
    "during a signal-cache write (model_2)": "write:*/model_2/signals/*.pt",
}


def fit(run_dir: Path, kill_at: str | None = None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    env.pop("SNN_MIA_KILL_AT", None)
    if kill_at:
        env["SNN_MIA_KILL_AT"] = kill_at
    done = subprocess.run([sys.executable, "run.py", *ARGS, "--run_dir", str(run_dir)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode not in (0, -9):
        print(done.stdout[-3000:], file=sys.stderr)
    return done.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="folder for the run directories (default: a temporary one, deleted)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        start = time.time()
        assert fit(base / "uninterrupted") == 0, "the uninterrupted run failed"
        want = (base / "uninterrupted" / "audit" / "report.json").read_bytes()
        print(f"{'moment':<50} {'killed':>7} {'rerun':>6}  report.json")
        ok = True
        for i, (moment, point) in enumerate(MOMENTS.items()):
            rd = base / f"kill_{i}"
            killed = fit(rd, point)
            rerun = fit(rd)
            path = rd / "audit" / "report.json"
            same = path.is_file() and path.read_bytes() == want
            ok &= killed == -9 and rerun == 0 and same
            print(f"{moment:<50} {'yes' if killed == -9 else f'rc {killed}':>7} {rerun:>6}  "
                  f"{'identical' if same else 'DIFFERENT'}")
        print(f"{'all identical' if ok else 'MISMATCH'} ({time.time() - start:.0f} s)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
