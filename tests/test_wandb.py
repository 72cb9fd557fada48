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


def _fit_lines(rd, *flags) -> list[str]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_", "SNN_MIA_"))}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    root = Path(run.__file__).resolve().parent
    done = subprocess.run([sys.executable, "run.py", "fit", "--run_dir", str(rd), "--data.num_references", "2",
                           "--trainer.max_epochs", "2", "--model.kind", "ann", "--model.width", "0.25",
                           "--trainer.enable_progress_bar", "false", *flags], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return (done.stdout + done.stderr).splitlines()


@pytest.mark.slow
def test_a_wandb_fit_prints_at_most_ten_lines_more_than_without_it(tmp_path):
    """W&B's own console output (a banner, sparklines and a summary per run: 83 more lines for
    this fit) is off; each model's run gets one line with its name, folder and sync command."""
    plain = _fit_lines(tmp_path / "plain")
    logger = "{class_path: lightning.pytorch.loggers.WandbLogger, init_args: {project: mia-test}}"
    rd = tmp_path / "wb"
    with_wandb = _fit_lines(rd, "--trainer.logger", logger)
    extra = len(with_wandb) - len(plain)
    assert extra <= 10, "\n".join(with_wandb)
    # Left: one deprecation warning per process, which W&B prints while wandb.init reads the
    # `anonymous=None` that Lightning's WandbLogger always passes, before any setting applies.
    wandb_own = [line for line in with_wandb if line.startswith("wandb:")]
    assert wandb_own in ([], ["wandb: WARNING The anonymous setting has no effect and will be removed in a future "
                              "version."]), "\n".join(with_wandb)
    said = [line for line in with_wandb if line.startswith("W&B run ")]
    assert len(said) == 3, with_wandb  # one per model
    for k in (0, 1, 2):
        (folder,) = (rd / f"model_{k}" / "wandb").glob("offline-run-*")
        line = next(line for line in said if f"/model_{k}:" in line)
        assert line == f"W&B run {rd.name}/model_{k}: offline in {folder}; upload it with: wandb sync {folder}"


def test_a_run_file_is_read_only_once_wandb_has_written_it(tmp_path, monkeypatch):
    """run.finish() returns before W&B's service writes the run file's last block: with the
    service paused as it is told the run is over, the file is its 7-byte header alone, and
    read_run waits (wandb.teardown) until the service, resumed later, has written it all."""
    import os
    import signal
    import subprocess
    import threading

    import wandb
    from wandb.sdk.lib.service import service_connection
    from wandb_records import records

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.teardown()  # a service of this test's own, found by its parent's pid
    informed = service_connection.ServiceConnection.inform_finish
    paused = []

    def pause_then_inform(self, run_id):
        core = subprocess.run(["pgrep", "-f", f"wandb-core.*--pid {os.getpid()}"], capture_output=True, text=True)
        paused.append(int(core.stdout.split()[0]))
        os.kill(paused[0], signal.SIGSTOP)
        threading.Timer(1.0, os.kill, (paused[0], signal.SIGCONT)).start()
        informed(self, run_id)

    monkeypatch.setattr(service_connection.ServiceConnection, "inform_finish", pause_then_inform)
    run_ = wandb.init(project="mia-test", dir=str(tmp_path), id="settle", settings=wandb.Settings(silent=True))
    run_.define_metric("epoch")
    run_.define_metric("audit/*", step_metric="epoch")
    run_.log({"epoch": 0, "audit/x": 0.5})
    run_.finish()
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert paused and path.stat().st_size == 7 and list(records(path)) == []  # finish() returned; nothing written
    record = read_run(path)
    assert record["metrics"] == {"epoch": "", "audit/*": "epoch"} and record["history"][0]["audit/x"] == 0.5
