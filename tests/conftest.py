import os

os.environ.setdefault("WANDB_MODE", "offline")  # no network here; W&B must never try to log in
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONWARNINGS", "ignore")
if "SNN_MIA_CACHE_DIR" not in os.environ:  # per-file hashes of data folders (datamodules/identity.py): not ~/.cache
    import tempfile

    os.environ["SNN_MIA_CACHE_DIR"] = tempfile.mkdtemp(prefix="snn_mia_cache_")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (a red CI must be reproducible); locally hypothesis
# explores new ones on each run (HYPOTHESIS_PROFILE=ci to reproduce CI's).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") or os.environ.get("HYPOTHESIS_PROFILE") == "ci":
    settings.load_profile("ci")


@pytest.fixture
def fast_trainer_args():
    """Flags that make a `run.py fit` take seconds: no progress bar, no summary."""
    return ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _restore_rank_zero():
    """A test that builds a DDP trainer under simulated SLURM ranks (rank 3 of 4) leaves
    Lightning's process-wide `rank_zero_only.rank` at 3, and every later logger in the test
    process would then act as a non-zero rank. Put it back after each test."""
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pytorch_rank_zero

    saved = (fabric_rank_zero.rank_zero_only.rank, pytorch_rank_zero.rank_zero_only.rank)
    yield
    fabric_rank_zero.rank_zero_only.rank, pytorch_rank_zero.rank_zero_only.rank = saved
