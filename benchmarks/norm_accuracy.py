"""The accuracy cost of GroupNorm (what DP-SGD needs) against BatchNorm, without DP, on digits.

    python benchmarks/norm_accuracy.py                      # ANN and SNN T = 4, 3 seeds, 30 epochs
    python benchmarks/norm_accuracy.py --epochs 10 --seeds 0 --groups 8 32

Each model trains as `run.py fit` trains the target (configs/default.yaml: CNN, Adam, lr 3e-3,
cosine, batch 64) on the target's half of the audit set (808 images) and is scored on its
non-members (809 images, the val set) and on the population (180 images). `--groups` lists the
GroupNorm group counts to try (networks.GROUP_NORM_GROUPS; a layer of C channels gets gcd(C, G)
groups). About 5 minutes on 2 idle cores with the defaults.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import warnings

import lightning as L
import torch

from datamodules import MembershipDataModule
from lightning_modules import Classifier, networks
from lightning_modules.networks import keep_large_tensors_in_heap


def accuracy(kind: str, norm: str, seed: int, epochs: int, run_dir: str) -> tuple[float, float]:
    """(non-member accuracy, population accuracy) of one model."""
    L.seed_everything(seed, verbose=False)
    dm = MembershipDataModule(num_references=0, run_dir=run_dir)
    model = Classifier(kind=kind, norm=norm, input_shape=dm.input_shape, num_classes=dm.num_classes,
                       normalization=dm.normalization)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=run_dir)
    trainer.fit(model, datamodule=dm)
    scorer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=run_dir)
    val = scorer.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    test = scorer.test(model, datamodule=dm, verbose=False)[0]["test/acc"]
    return val, test


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--groups", type=int, nargs="+", default=[networks.GROUP_NORM_GROUPS])
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"digits, cnn width 1, {args.epochs} epochs, seeds {args.seeds}, threads={torch.get_num_threads()}, "
          f"large-tensors-in-heap={keep_large_tensors_in_heap()}")
    print(f"{'model':>8} {'norm':>10} {'non-member acc':>22} {'population acc':>22}")
    variants = [("batch", None)] + [("group", g) for g in args.groups]
    with tempfile.TemporaryDirectory() as run_dir:
        for kind in ("ann", "snn"):
            for norm, groups in variants:
                if groups is not None:
                    networks.GROUP_NORM_GROUPS = groups
                scores = [accuracy(kind, norm, s, args.epochs, run_dir) for s in args.seeds]
                val, test = ([s[i] for s in scores] for i in (0, 1))
                sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
                label = norm if groups is None else f"group G={groups}"
                name = kind if kind == "ann" else "snn T=4"
                print(f"{name:>8} {label:>10} {statistics.mean(val):>14.4f} ± {sd(val):.4f} "
                      f"{statistics.mean(test):>14.4f} ± {sd(test):.4f}", flush=True)


if __name__ == "__main__":
    main()
