"""Train and audit ANN / SNN targets for membership inference.

    python run.py fit                                   # the embedded default (digits, SNN, K = 4)
    python run.py fit --model.kind ann --run_dir runs/digits_ann
    python run.py fit --config configs/fashion_mnist.yaml
    python run.py test --run_dir runs/default           # test accuracy of the last checkpoint
    python run.py fit --print_config                    # the resolved configuration

Every run reads configs/default.yaml first, then any --config files, then flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from datamodules import ConfigError, MembershipDataModule
from lightning_modules import Classifier

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test")


def model_dir(run_dir: str | Path, index: int) -> Path:
    """run_dir/model_0 is the target, run_dir/model_k the k-th reference."""
    return Path(run_dir) / f"model_{index}"


class AuditCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=str, default="runs/default",
                            help="Run directory: membership plan, one model_<k>/ per model, audit/ reports.")
        parser.link_arguments("run_dir", "data.run_dir")
        for key in ("num_classes", "input_shape", "normalization"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    @property
    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        # Each model gets its own initialisation seed (seed_everything + model index),
        # so references are independent draws, and any model can be retrained alone.
        seed = self._cfg.seed_everything
        if seed is not False:
            index = self._cfg.data.model_index or 0
            L.seed_everything(int(seed) + index, workers=True, verbose=False)

    def instantiate_trainer(self, **kwargs):
        directory = model_dir(self._cfg.run_dir, self.datamodule.index)
        trainer_cfg = (self.config_init[self.subcommand] if self.subcommand else self.config_init).trainer
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(directory)
        if trainer_cfg.get("logger") in (None, True):
            # CSV by default: works offline and keeps every epoch next to the checkpoints.
            kwargs["logger"] = CSVLogger(save_dir=str(directory), name="logs", version="")
        trainer = super().instantiate_trainer(**kwargs)
        checkpoint = ModelCheckpoint(dirpath=directory / "checkpoints", save_last=True, save_top_k=0)
        trainer.callbacks.append(checkpoint)
        return trainer

    def _last_checkpoint(self) -> Path:
        return model_dir(self._cfg.run_dir, self.datamodule.index) / "checkpoints" / "last.ckpt"

    def fit(self, model, datamodule, ckpt_path=None, **kwargs):
        last = self._last_checkpoint()
        if ckpt_path is None and last.exists():
            ckpt_path = str(last)  # resume an interrupted run of this model
            print(f"resuming model {datamodule.index} from {last}", file=sys.stderr)
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def _evaluate(self, fn, model, datamodule, ckpt_path=None, **kwargs):
        if ckpt_path is None:
            last = self._last_checkpoint()
            if not last.exists():
                raise ConfigError(f"run_dir={self._cfg.run_dir!r}: no checkpoint at {last}; train it with `run.py fit` or pass --ckpt_path")
            ckpt_path = str(last)
        fn(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def validate(self, model, datamodule, ckpt_path=None, **kwargs):
        self._evaluate(self.trainer.validate, model, datamodule, ckpt_path, **kwargs)

    def test(self, model, datamodule, ckpt_path=None, **kwargs):
        self._evaluate(self.trainer.test, model, datamodule, ckpt_path, **kwargs)


def cli_main(args: list[str] | None = None, run: bool = True) -> AuditCLI:
    per_command = {"parser_mode": "omegaconf", "default_config_files": [str(DEFAULT_CONFIG)]}
    return AuditCLI(
        Classifier,
        MembershipDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # Subcommand parsers take their own kwargs; without subcommands (run=False) the main one does.
        parser_kwargs={sub: dict(per_command) for sub in SUBCOMMANDS} if run else per_command,
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> int:
    try:
        cli_main(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
