import os

os.environ.setdefault("WANDB_MODE", "offline")  # no network here; W&B must never try to log in
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

import pytest  # noqa: E402


@pytest.fixture
def fast_trainer_args():
    """Flags that make a `run.py fit` take seconds: no progress bar, no summary."""
    return ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
