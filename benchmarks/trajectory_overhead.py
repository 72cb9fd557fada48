"""Cost of recording a reference's trajectory (one plain pass over the audit set and the
population per validation epoch, audit/trajectory.py) against its floor and its epoch.

    python benchmarks/trajectory_overhead.py              # digits default (SNN T=4, K=4)
    python benchmarks/trajectory_overhead.py --rounds 5

Per round, interleaved, medians reported:
- floor: a bare `torch.no_grad()` pass of the model over the audit and population loaders;
- record: `audit.trajectory.record` of one epoch (the pass, the signals, the files);
- epoch: one training epoch of reference 1 (Lightning, its members, one validation pass)
  without the recorder, and with it (TrajectoryRecorder).
Goals: record / floor <= 1.15 (as benchmarks/callback_overhead.py for the target), and
printed beside it, epoch with recorder / bare epoch.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages live at the repo root

import lightning as L
import torch

from audit.trajectory import record, trajectory_dir
from callbacks.trajectory import TrajectoryRecorder
from datamodules import MembershipDataModule
from lightning_modules import Classifier
from lightning_modules.networks import keep_large_tensors_in_heap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from callback_overhead import floor  # noqa: E402  the same floor as the target's benchmark


def epoch_time(model, dm, callbacks) -> float:
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(model, dm)
    return time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    keep_large_tensors_in_heap()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        dm = MembershipDataModule(dataset="digits", num_references=4, run_dir=str(Path(tmp) / "run"), model_index=1)
        dm.prepare_data()
        dm.setup()
        torch.manual_seed(0)
        model = Classifier(kind="snn", T=4, num_classes=dm.num_classes, input_shape=dm.input_shape,
                           normalization=dm.normalization)
        loaders = [dm.audit_dataloader(), dm.population_dataloader()]
        rows = {"floor": [], "record": [], "epoch": [], "epoch+record": []}
        for _ in range(args.rounds):
            rows["floor"].append(floor(model, loaders, 1))
            shutil.rmtree(trajectory_dir(dm.run_dir, 1), ignore_errors=True)
            start = time.perf_counter()
            record(dm, 1, 0, model=model)
            rows["record"].append(time.perf_counter() - start)
            rows["epoch"].append(epoch_time(model, dm, []))
            shutil.rmtree(trajectory_dir(dm.run_dir, 1), ignore_errors=True)
            rows["epoch+record"].append(epoch_time(model, dm, [TrajectoryRecorder()]))
        m = {k: statistics.median(v) for k, v in rows.items()}
        print(f"N {dm.membership.shape[1]}, Z {len(dm.population_indices)}, members {int(dm.membership[1].sum())}")
        print("median seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
        print(f"record / floor: {m['record'] / m['floor']:.2f} (goal <= 1.15)")
        print(f"epoch with recorder / bare epoch: {m['epoch+record'] / m['epoch']:.2f}")


if __name__ == "__main__":
    main()
