"""W&B in offline mode, read back from the run files: one run per model, even when the
references train in the same process as the target; the target's audit on the epoch axis;
the ROC table, the final summary and the run config on the target's run."""

import pytest

import run
from wandb_records import read_run


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    rd = tmp_path_factory.mktemp("wandb") / "run"
    logger = "{class_path: lightning.pytorch.loggers.WandbLogger, init_args: {project: mia-test}}"
    try:
        assert run.main(["fit", "--run_dir", str(rd), "--data.num_references", "2", "--trainer.max_epochs", "2",
                         "--model.width", "0.5", "--trainer.enable_progress_bar", "false",
                         "--trainer.logger", logger]) == 0
    finally:
        mp.undo()
    runs = {}
    for k in (0, 1, 2):
        files = sorted((rd / f"model_{k}" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(files) == 1, (k, files)  # each model writes its own run, in its own folder
        runs[k] = read_run(files[0])
    return rd, runs


def test_one_run_per_model_with_its_own_id_and_tags(wandb_run):
    from training.loggers import wandb_id

    rd, runs = wandb_run
    assert [runs[k]["id"] for k in (0, 1, 2)] == [wandb_id(rd, k) for k in (0, 1, 2)]
    assert len({r["id"] for r in runs.values()}) == 3
    assert "role=target" in runs[0]["tags"] and all("role=reference" in runs[k]["tags"] for k in (1, 2))
    for k, r in runs.items():
        assert r["config"]["model"] == f"model_{k}" and r["config"]["kind"] == "snn" and r["config"]["T"] == 4


def test_references_hold_only_their_own_training_metrics(wandb_run):
    _, runs = wandb_run
    for k in (1, 2):
        keys = {key for row in runs[k]["history"] for key in row}
        assert {"train/acc", "val/acc", "epoch"} <= keys
        assert not any(key.startswith(("attack/", "audit/", "final/")) for key in keys), sorted(keys)
        assert sorted({row["epoch"] for row in runs[k]["history"] if "val/acc" in row}) == [0, 1]


def test_the_targets_audit_is_charted_against_the_epoch(wandb_run):
    _, runs = wandb_run
    target = runs[0]
    assert target["metrics"]["attack/*"] == "epoch" and target["metrics"]["audit/*"] == "epoch"
    audited = [row for row in target["history"] if "attack/rmia_offline/auc" in row]
    assert [row["epoch"] for row in audited] == [0, 1]  # one point per epoch, each carrying its epoch
    assert all({"audit/train_acc", "audit/test_acc", "audit/acc_gap"} <= set(row) for row in audited)
    assert any(key.startswith("audit/roc_table") for row in target["history"] for key in row)
    assert "final/rmia_offline/auc" in target["summary"]
    assert target["config"]["config"]["data"]["num_references"] == 2  # the resolved run config
