"""`run.py submit --submit` on a real SLURM cluster (two nodes on this machine: two slurmd on one
host): the reference array, the afterok chain and the audit job; a target requeued mid-training
by SIGUSR1; a reference that gets SLURM's time-limit signal after its training finished; and
`--nodes 2`, one rank per node, whose report equals one node's with two ranks.

.ci/run starts the cluster with tests/slurm/start_cluster.sh (Debian's slurm-wlm and munge,
about a minute to install, a second to start). Where no cluster answers, these tests skip and
say how to start one; tests/test_slurm.py covers the scripts with a fake sbatch.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.slurm import submit_main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data.num_references", "2", "--trainer.max_epochs", "2", "--model.width", "0.5",
        "--trainer.enable_progress_bar", "false", "--gpus_per_node", "0", "--time", "20"]


def _cluster_up() -> bool:
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s.strip().rstrip("*") in ("idle", "mixed", "allocated") for s in out.split())


if not _cluster_up():
    pytest.skip("no SLURM cluster answers here (sinfo); `bash tests/slurm/start_cluster.sh` starts a one-node "
                "cluster (root, Debian's slurm-wlm and munge)", allow_module_level=True)


@pytest.fixture(autouse=True)
def job_env(monkeypatch):
    # sbatch hands the submitting environment to the jobs: one thread each (2 cores, 2 tasks at once)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("SNN_MIA_KILL_AT", raising=False)
    monkeypatch.delenv("SNN_MIA_PAUSE_AT", raising=False)


def job(jid: str) -> dict:
    """scontrol's record of a job (or an array task, e.g. '12_1'): {JobState, ExitCode, Restarts, ...}."""
    out = subprocess.run(["scontrol", "-o", "show", "job", jid], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0])) if out.strip() else {}


def wait(jids: list[str], timeout: float, until=("COMPLETED",)) -> dict:
    end = time.time() + timeout
    states = {}
    while time.time() < end:
        states = {j: job(j).get("JobState") for j in jids}
        if all(s in until or s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") for s in states.values()):
            return states
        time.sleep(2)
    raise AssertionError(f"jobs still not done after {timeout:.0f} s: {states}")


def submit(capsys, *args) -> dict[str, str]:
    assert submit_main([*args, "--submit"]) == 0, capsys.readouterr().err
    ids = dict(pair.split("=") for pair in capsys.readouterr().out.split())
    return ids


def test_the_reference_array_the_target_and_the_audit_run_in_order(tmp_path, capsys):
    rd = tmp_path / "run"
    ids = submit(capsys, "--run_dir", str(rd), *TINY, "--audit")
    assert set(ids) == {"references", "target", "audit"}
    tasks = [f"{ids['references']}_1", f"{ids['references']}_2"]
    states = wait([*tasks, ids["target"], ids["audit"]], timeout=600)
    logs = "\n".join(p.read_text() for p in sorted((rd / "slurm").glob("*.out")))
    assert set(states.values()) == {"COMPLETED"}, (states, logs[-3000:])
    for k in (0, 1, 2):
        assert json.loads((rd / f"model_{k}" / "done.json").read_text())["model_index"] == k
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert report["settings"]["references"] == [1, 2] and "rmia_online" in report["attacks"]
    assert report["settings"]["signal_cache"] == {"hits": 3}  # every model's signals were cached by the target job
    assert all(0 <= m["auc"] <= 1 for m in report["attacks"].values())


def test_a_target_requeued_mid_training_resumes_and_finishes(tmp_path, capsys, monkeypatch):
    rd = tmp_path / "run"
    # The signal arrives while epoch 1 runs (epoch 0 is checkpointed): the job sleeps there for longer
    # than SLURM's KillWait, so the requeued copy, not the signalled one, finishes the training.
    # Without the window a tiny model may finish in KillWait (SIGTERM is Lightning's to ignore here).
    monkeypatch.setenv("SNN_MIA_PAUSE_AT", "batch:model_0:1:0")
    monkeypatch.setenv("SNN_MIA_PAUSE_S", "15")
    ids = submit(capsys, "--run_dir", str(rd), *TINY[2:], "--data.num_references", "0", "--trainer.max_epochs", "12")
    jid = ids["target"]
    last = rd / "model_0" / "checkpoints" / "last.ckpt"
    end = time.time() + 300
    logs = lambda: "\n".join(p.read_text() for p in (rd / "slurm").glob("*.out"))  # noqa: E731
    while "pausing" not in logs():  # in epoch 1: the requeue must not start from scratch
        assert time.time() < end and job(jid).get("JobState") in ("PENDING", "RUNNING"), job(jid)
        time.sleep(1)
    assert last.is_file()
    subprocess.run(["scancel", "--signal=USR1", jid], check=True)  # what SLURM sends before the time limit
    end = time.time() + 120
    while job(jid).get("Restarts", "0") == "0":
        assert time.time() < end, f"not requeued: {job(jid)}"
        time.sleep(1)
    # A requeued job waits about two minutes before it may start again: let it start now.
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], capture_output=True)
    states = wait([jid], timeout=600)
    log = "\n".join(p.read_text() for p in (rd / "slurm").glob("*.out"))
    assert states[jid] == "COMPLETED", log[-3000:]
    assert "resuming model_0 from" in log and "hpc_ckpt_" in log
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == list(range(12))  # every epoch, once
    assert not list((rd / "model_0").glob("hpc_ckpt_*"))


def test_a_signal_after_training_finished_ends_the_job_completed(tmp_path, capsys, monkeypatch):
    rd = tmp_path / "run"
    for k in (0, 2):  # only reference 1 is left to train: the resubmit logic queues just it
        (rd / f"model_{k}").mkdir(parents=True)
        (rd / f"model_{k}" / "done.json").write_text("{}")
    monkeypatch.setenv("SNN_MIA_PAUSE_AT", "fitted:model_1")  # a window after fit, before exit
    monkeypatch.setenv("SNN_MIA_PAUSE_S", "20")
    ids = submit(capsys, "--run_dir", str(rd), *TINY)
    assert set(ids) == {"references"}
    task = f"{ids['references']}_1"
    log = rd / "slurm" / f"{rd.name}-refs-{ids['references']}_1.out"
    end = time.time() + 300
    while not (log.is_file() and "pausing" in log.read_text()):
        assert time.time() < end and job(task).get("JobState") in ("PENDING", "RUNNING"), job(task)
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR1", task], check=True)  # as the time-limit signal would
    states = wait([task], timeout=120)
    text = log.read_text()
    assert states[task] == "COMPLETED" and job(task).get("ExitCode") == "0:0", text[-2000:]
    assert "after training finished" in text
    assert (rd / "model_1" / "done.json").is_file()


def test_two_real_nodes_give_the_report_of_one_node_with_two_ranks(tmp_path, capsys):
    # start_cluster.sh gives the cluster two nodes (two slurmd on this host): `sbatch --nodes=2`
    # runs one rank per node under srun, as on a real cluster, and the DDP ranks talk over gloo.
    from test_multinode import _env, _free_port, differences

    names = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()
    if len(set(names)) < 2:
        pytest.skip(f"the cluster has one node ({names}); tests/slurm/start_cluster.sh makes two where it can")
    rd = tmp_path / "run"
    ids = submit(capsys, "--run_dir", str(rd), *TINY, "--nodes", "2")
    jobs = [f"{ids['references']}_1", f"{ids['references']}_2", ids["target"]]
    states = wait(jobs, timeout=900)
    logs = "\n".join(p.read_text() for p in sorted((rd / "slurm").glob("*.out")))
    assert set(states.values()) == {"COMPLETED"}, (states, logs[-3000:])
    assert all(job(j).get("NumNodes") == "2" for j in jobs), [job(j) for j in jobs]
    assert logs.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 3  # every model trained by two ranks, one per node
    # the same flags on one node with two ranks, started here
    one = tmp_path / "one_node"
    proc = subprocess.run([sys.executable, "run.py", "fit", "--run_dir", str(one), *TINY[:8], "--trainer.accelerator",
                           "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"], cwd=ROOT,
                          env=_env(MASTER_PORT=_free_port()), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((rd / "audit" / "report.json").read_text())
    b = json.loads((one / "audit" / "report.json").read_text())
    assert [h["epoch"] for h in a["history"]] == [0, 1] and a["settings"]["audit_samples"] == 1617
    assert differences(a, b) == []
