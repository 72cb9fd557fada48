"""Multi-node DDP, simulated on one machine: `run.py fit` on the default config (shortened:
2 epochs, K = 2) with `--trainer.num_nodes 2`, its processes started on localhost (gloo)
with the environment SLURM gives the tasks of `srun` on two nodes (SLURM_NNODES,
SLURM_NODEID, SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_NTASKS_PER_NODE,
MASTER_ADDR, MASTER_PORT, ...), so every process is one rank and Lightning launches none;
or with the environment of a launcher that starts one process per node (NODE_RANK,
MASTER_ADDR, MASTER_PORT), whose process Lightning turns into that node's ranks.

Two nodes of one rank each and two nodes of two ranks each under SLURM, and two nodes of two
ranks each under Lightning's launch. Each report.json must equal, field by field and bit
for bit, the report of the same plan trained and audited on ONE node with the same number
of ranks (`--trainer.devices 2` or `4`, Lightning starting the processes): the same
per-rank batch arithmetic (each rank's DistributedSampler shard, its batches, gloo's
gradient all-reduce, each rank's shard of the audit queries). Every
process runs with OMP_NUM_THREADS=1: the thread count changes float results, and
Lightning would otherwise give a rank cpu_count / local ranks threads, which differs
between one node and two.

A single process differs, and is not compared bit for bit: its batches are the union of the
ranks' (another gradient sum, so other weights after the first step), and the same
checkpoints queried in one process give float32 logits that move by an ulp with the
batch's composition (tests/test_ddp.py compares that to 1e-6).
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--trainer.max_epochs", "2", "--data.num_references", "2", "--trainer.accelerator", "cpu",
         "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false"]
TIMEOUT = 600
# Fields of report.json that name the run rather than measure it (the run directory's path).
RUN_SPECIFIC = ("run_dir",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE",
                                                         "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")}
    env.update(WANDB_MODE="offline", MPLBACKEND="Agg", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               **{k: str(v) for k, v in extra.items()})
    return env


def _launch(args, envs: list[dict], logs: Path) -> list[str]:
    """Start one `run.py` process per environment, wait for all; their outputs."""
    procs = []
    for i, env in enumerate(envs):
        log = open(logs / f"process_{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, env=_env(**env), stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True), log))
    outs = []
    try:
        for p, log in procs:
            try:
                p.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"run.py timed out after {TIMEOUT} s")
    finally:
        for p, log in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # anything a process left behind
            except ProcessLookupError:
                pass
            log.close()
            outs.append(Path(log.name).read_text())
    for (p, _), out in zip(procs, outs):
        assert p.returncode == 0, out[-5000:]
    return outs


def slurm_tasks(nodes: int, per_node: int) -> list[dict]:
    """The environment of each task of `srun` in a job of `nodes` nodes with `per_node`
    tasks each (SLURM numbers tasks node by node), all on this host."""
    port = _free_port()
    return [{"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "multinode", "SLURM_NNODES": nodes,
             "SLURM_NTASKS": nodes * per_node, "SLURM_NTASKS_PER_NODE": per_node,
             "SLURM_NODELIST": "localhost", "SLURM_NODEID": rank // per_node, "SLURM_PROCID": rank,
             "SLURM_LOCALID": rank % per_node, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            for rank in range(nodes * per_node)]


def lightning_nodes(nodes: int) -> list[dict]:
    """The environment of the one process per node that a launcher other than SLURM starts
    (torchrun-style: NODE_RANK, MASTER_ADDR, MASTER_PORT): Lightning starts that node's
    other ranks itself."""
    port = _free_port()
    return [{"NODE_RANK": node, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port} for node in range(nodes)]


def _report(rd: Path) -> dict:
    return json.loads((rd / "audit" / "report.json").read_text())


def differences(a, b, path: str = "") -> list[str]:
    """Every leaf where two JSON values differ (bit for bit for numbers), as 'path: a != b'."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one report" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            if not (path == "" and k in RUN_SPECIFIC):
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]


def test_differences_sees_every_leaf():
    a = {"attacks": {"rmia": {"auc": 0.5, "auc_ci": [0.4, 0.6]}}, "history": [{"epoch": 0}], "run_dir": "x"}
    b = {"attacks": {"rmia": {"auc": 0.5 + 2**-52, "auc_ci": [0.4, 0.6]}}, "history": [{"epoch": 0}, {}],
         "run_dir": "y"}
    assert differences(a, a) == [] and differences(a, {**a, "run_dir": "y"}) == []
    assert differences(a, b) == ["/attacks/rmia/auc: 0.5 != 0.5000000000000002", "/history: 1 != 2 items"]
    assert differences({"x": 1}, {"x": 1.0}) == ["/x: 1 != 1.0"]


def _check_whole_audit(report: dict) -> None:
    """The audit counted every audit and population sample once, at every epoch."""
    settings = report["settings"]
    assert settings["audit_samples"] == 1617 and settings["population_samples"] == 180  # digits: 1,797 - 180
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert set(report["attacks"]) == {"attack_p", "attack_r", "rmia_offline", "rmia_online", "lira_online",
                                      "lira_offline", "reference_ratio"}


@pytest.mark.slow
@pytest.mark.parametrize("nodes, per_node, launcher", [(2, 1, "slurm"), (2, 2, "slurm"), (2, 2, "lightning")])
def test_two_simulated_nodes_equal_one_node_with_as_many_ranks(tmp_path, nodes, per_node, launcher):
    world = nodes * per_node
    multi, single = tmp_path / "multinode", tmp_path / "one_node"
    (tmp_path / "logs_multi").mkdir()
    (tmp_path / "logs_single").mkdir()
    outs = _launch(["fit", "--run_dir", str(multi), *SHORT, "--trainer.num_nodes", str(nodes),
                    "--trainer.devices", str(per_node)],
                   slurm_tasks(nodes, per_node) if launcher == "slurm" else lightning_nodes(nodes),
                   tmp_path / "logs_multi")
    assert sum(out.count("report: ") for out in outs) == 1  # rank 0 alone writes the report
    assert all(f"GLOBAL_RANK: {r}" in "".join(outs) for r in range(1, world))
    _launch(["fit", "--run_dir", str(single), *SHORT, "--trainer.devices", str(world)],
            [{"MASTER_PORT": _free_port()}], tmp_path / "logs_single")
    a, b = _report(multi), _report(single)
    _check_whole_audit(a)
    assert differences(a, b) == []
