"""Time of one MembershipAttack audit (one epoch's attack work) against its floor.

    python benchmarks/callback_overhead.py                 # digits default + Fashion-MNIST SNN T=4
    python benchmarks/callback_overhead.py --settings digits --rounds 5

The floor is a bare `torch.no_grad()` loop of the same model over the same audit and
population loaders (same batch size): the least any audit can cost. The callback's
audit (query passes + attack math; reference signals come from the cache) is timed
against it side by side, in interleaved rounds, medians reported. Goal: callback /
floor <= 1.15 for plain queries and <= 1.15 x n for input dropout with n masks.
Also printed: the audit's share of an epoch's wall time (one training epoch of the
target on its members + one validation pass + the audit).

    python benchmarks/callback_overhead.py --settings digits --hooks

adds the cost of recording the SNN-native levels (steps, spikes, membrane: forward hooks and
the per-step readout, attacks/hooks.py) in the plain signal pass: the signal pass with every
level against the same pass without, interleaved rounds, medians; the extra time as a share
of the plain audit's time. Goal: <= 10%. A run that asks for no level registers no hook.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages live at the repo root

import lightning as L
import torch

from audit.signals import compute_signals
from callbacks import MembershipAttack
from datamodules import MembershipDataModule
from lightning_modules import Classifier
from lightning_modules.networks import keep_large_tensors_in_heap
from training.cli import run_cli

SETTINGS = {
    # name: (data kwargs, model kwargs)
    "digits": (dict(dataset="digits", num_references=4), dict(kind="snn", T=4)),
    "fashion_mnist": (dict(dataset="fashion_mnist", num_references=2, audit_size=4000, population=1000, batch_size=128),
                      dict(kind="snn", T=4)),
}


def _references(rd: Path, data: dict, model: dict) -> None:
    """Reference checkpoints to attack with (one training batch each: their signals'
    values do not change the cost of scoring)."""
    flags = [f"--data.{k}={v}" for k, v in data.items()] + [f"--model.{k}={v}" for k, v in model.items()]
    for k in range(1, data["num_references"] + 1):
        args = ["fit", "--run_dir", str(rd), "--data.model_index", str(k), "--trainer.max_epochs", "1",
                "--trainer.max_steps", "1", "--trainer.limit_val_batches", "2",
                "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]", *flags]
        assert run_cli(args) == 0


def floor(model, loaders, passes: int) -> float:
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        for loader in loaders:
            for x, _, _ in loader:
                for _ in range(passes):
                    model(x)
    return time.perf_counter() - start


def epoch_time(model, dm) -> float:
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(model, dm)
    return time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=10, help="input-dropout masks")
    ap.add_argument("--hooks", action="store_true", help="also time recording the SNN-native levels")
    args = ap.parse_args(argv)
    keep_large_tensors_in_heap()  # as run.py does
    dropout = f"dropout:p=0.01,n={args.n}"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    print(f"{'setting':<14} {'query':<22} {'N':>6} {'Z':>5} {'floor s':>8} {'audit s':>8} {'ratio':>6} {'goal':>6} ok  "
          f"{'epoch s':>8} {'share':>6}")
    for name in args.settings:
        data, model_kw = SETTINGS[name]
        with tempfile.TemporaryDirectory() as tmp:
            rd = Path(tmp) / "run"
            _references(rd, data, model_kw)
            dm = MembershipDataModule(**data, run_dir=str(rd), model_index=0)
            dm.prepare_data()
            dm.setup()
            torch.manual_seed(0)
            model = Classifier(**model_kw, num_classes=dm.num_classes, input_shape=dm.input_shape,
                               normalization=dm.normalization)
            loaders = [dm.audit_dataloader(), dm.population_dataloader()]
            t_epoch = epoch_time(model, dm)
            for query, passes, goal in (("plain", 1, 1.15), (dropout, args.n, 1.15 * args.n)):
                cb = MembershipAttack(queries=[query], progress=False)
                cb.check()
                cb._bars = False
                cb._prepare(dm, model)  # reference signals -> cache (not timed: once per run)
                t_floor, t_cb = [], []
                for _ in range(args.rounds):
                    t_floor.append(floor(model, loaders, 1))
                    start = time.perf_counter()
                    cb.audit_epoch(dm, model)
                    t_cb.append(time.perf_counter() - start)
                f, c = statistics.median(t_floor), statistics.median(t_cb)
                ratio = c / f
                share = c / (t_epoch + c)
                print(f"{name:<14} {cb.settings.strategies[0].name:<22} {dm.membership.shape[1]:>6} "
                      f"{len(dm.population_indices):>5} {f:8.2f} {c:8.2f} {ratio:6.2f} {goal:6.2f} "
                      f"{'yes' if ratio <= goal else 'NO ':<3} {t_epoch:8.2f} {share:6.1%}")
                if args.hooks and passes == 1:
                    hooks(model, dm, c, args.rounds)


def hooks(model, dm, audit_s: float, rounds: int) -> None:
    """The plain signal pass with and without every recorded level; the difference against the audit."""
    levels = ("steps", "spikes", "membrane")
    bare, full = [], []
    for _ in range(rounds):
        for times, lv in ((bare, ()), (full, levels)):
            start = time.perf_counter()
            compute_signals(model, dm, "plain", device=model.device, levels=lv)
            times.append(time.perf_counter() - start)
    b, f = statistics.median(bare), statistics.median(full)
    extra = (f - b) / audit_s
    print(f"  hooks: signal pass {b:.2f} s without levels, {f:.2f} s with steps+spikes+membrane: "
          f"+{f - b:.2f} s = {extra:+.1%} of the plain audit ({audit_s:.2f} s); goal <= 10%: "
          f"{'yes' if extra <= 0.10 else 'NO'}")


if __name__ == "__main__":
    main()
