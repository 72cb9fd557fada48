"""ANN-to-SNN conversion quality against latency, for each initial membrane potential.

    python benchmarks/conversion_agreement.py                     # v_init 0 and 0.5, T = 1 2 4 8 64
    python benchmarks/conversion_agreement.py --v-init 0.5 --T 1 2 4 --ann-epochs 8
    python benchmarks/conversion_agreement.py --norm group        # GroupNorm networks (model.dp needs them)

Trains the setting of tests/test_conversion.py (a width-0.5 CNN ANN on digits, seed 0),
converts it with `model.init=converted` (spikingjelly ann2snn thresholds, mode max) for
each `convert_v_init`, and prints, before any fine-tuning, how often the SNN predicts
the ANN's class on the population inputs ("agree") and its accuracy, at each T. The
The conversion table in docs/models.md comes from this script's default run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lightning as L  # noqa: E402

from datamodules.membership import MembershipDataModule  # noqa: E402
from lightning_modules.classifier import Classifier  # noqa: E402
from lightning_modules.conversion import initialise  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--v-init", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--T", type=int, nargs="+", default=[1, 2, 4, 8, 64])
    ap.add_argument("--ann-epochs", type=int, default=4)
    ap.add_argument("--convert-mode", default="max")
    ap.add_argument("--norm", default="batch", help="batch or group (GroupNorm, as DP training needs)")
    args = ap.parse_args(argv)

    L.seed_everything(0, verbose=False)
    dm = MembershipDataModule(num_references=0, batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    common = dict(arch="cnn", width=0.5, input_shape=dm.input_shape, num_classes=dm.num_classes,
                  normalization=dm.normalization, norm=args.norm)
    ann = Classifier(kind="ann", **common)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_epochs=args.ann_epochs, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
        trainer.fit(ann, datamodule=dm)
        ckpt = Path(tmp) / "ann.ckpt"
        trainer.save_checkpoint(ckpt)
        x = torch.cat([b[0] for b in dm.test_dataloader()])
        y = torch.cat([b[1] for b in dm.test_dataloader()])
        with torch.no_grad():
            ann_pred = ann.eval()(x).argmax(1)
        print(f"ANN population accuracy {(ann_pred == y).float().mean():.3f} ({len(y)} inputs)")
        print(f"{'v_init':>7} {'T':>4} {'agree':>7} {'acc':>7}")
        for v_init in args.v_init:
            torch.manual_seed(0)
            snn = Classifier(kind="snn", neuron="if", init="converted", init_from=str(ckpt), T=1,
                             convert_v_init=v_init, convert_mode=args.convert_mode, **common)
            initialise(snn, dm.train_dataloader())
            snn.eval()
            for T in args.T:
                snn.T = T
                with torch.no_grad():
                    pred = snn(x).argmax(1)
                print(f"{v_init:>7.2f} {T:>4d} {(pred == ann_pred).float().mean():>7.3f} {(pred == y).float().mean():>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
