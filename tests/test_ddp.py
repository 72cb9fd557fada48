"""DDP: the attack metrics count every audit and population sample exactly once.

Unit tests of the shard merge run in this process. The end-to-end tests (marked slow,
still part of the default `pytest -q`) start `python run.py ...` as subprocesses with
two gloo processes on the CPU, on an audit set (301) and a population (181) whose
sizes do not divide by the world size, so that DistributedSampler pads by repeating
samples, and compare with the single-process audit of the same checkpoints.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import run
from attacks import query_signals
from audit.distributed import Ranks, merge_shards, pack_shard, shard_loader
from audit.signals import compute_signals

ROOT = Path(run.__file__).resolve().parent
KEYS = ("probability", "rescaled_logit", "correct", "labels")


# -- the merge, in one process --------------------------------------------------------------
class Indexed(Dataset):
    """n random 1x4x4 images, labels in 0..2, each item (x, y, index)."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(n)
        self.x, self.y = torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize("n, world", [(11, 2), (11, 3), (11, 4), (7, 7), (5, 8), (301, 2)])
def test_sharded_queries_merge_to_the_single_pass_each_sample_once(n, world):
    model, loader = _model(), DataLoader(Indexed(n), batch_size=4)
    whole = query_signals(model, loader, "dropout:p=0.2,n=3", seed=5, num_samples=n)
    shards, seen_total = [], 0
    for rank in range(world):
        part = shard_loader(loader, rank, world)
        sig = query_signals(model, part, "dropout:p=0.2,n=3", seed=5, num_samples=n, allow_missing=True)
        seen_total += len(part.sampler)
        shards.append(pack_shard(sig))
    if n % world:
        assert seen_total > n  # the sampler padded by repeating samples
    merged = merge_shards(shards, n)
    assert set(merged) == set(KEYS)
    for key in ("correct", "labels"):
        assert torch.equal(merged[key], whole[key]), key
    for key in ("probability", "rescaled_logit"):  # float32 logits move by an ulp with the batch's composition
        torch.testing.assert_close(merged[key], whole[key], rtol=1e-5, atol=1e-6)
    assert merged["probability"].shape == (3, n) and not merged["probability"].isnan().any()


def test_merge_takes_a_repeated_sample_from_the_lowest_rank_and_refuses_gaps():
    def shard(index, value):
        index = torch.tensor(index)
        return {"index": index, "p": torch.full((2, len(index)), float(value), dtype=torch.float64),
                "correct": torch.ones(2, len(index), dtype=torch.bool), "labels": index * 10}

    merged = merge_shards([shard([0, 2, 4], 1.0), shard([1, 3, 0], 2.0)], 5)  # sample 0 padded onto rank 1
    assert merged["p"].tolist() == [[1.0, 2.0, 1.0, 2.0, 1.0]] * 2
    assert merged["labels"].tolist() == [0, 10, 20, 30, 40]
    assert merged["correct"].all() and merged["correct"].dtype == torch.bool
    with pytest.raises(RuntimeError, match="1 of 6 samples were queried by no rank"):
        merge_shards([shard([0, 2, 4], 1.0), shard([1, 3], 2.0)], 6)
    with pytest.raises(ValueError, match="outside"):
        merge_shards([shard([0, 7], 1.0)], 5)


def test_one_process_ranks_are_pass_through():
    ranks = Ranks()
    assert (ranks.world_size, ranks.rank, ranks.sharded, ranks.is_zero) == (1, 0, False, True)
    assert ranks.broadcast({"a": 1}) == {"a": 1} and ranks.gather(3) == [3]
    ranks.barrier()

    class Two:  # a strategy claiming two ranks with no process group: refused, not silently unsharded
        world_size, global_rank = 2, 0

    with pytest.raises(RuntimeError, match="process group"):
        Ranks(Two())


def test_compute_signals_with_one_rank_matches_the_plain_path():
    class DM:
        def audit_dataloader(self, positions=None):
            return DataLoader(Indexed(9), batch_size=4)

        def population_dataloader(self):
            return DataLoader(Indexed(5), batch_size=2)

    model = _model()
    a = compute_signals(model, DM(), "plain")
    b = compute_signals(model, DM(), "plain", ranks=Ranks())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- end to end: two gloo processes on the CPU ------------------------------------------------
DATA = ["--data.num_references", "2", "--data.audit_size", "301", "--data.population", "181", "--data.batch_size", "32"]
MODEL = ["--model.kind", "ann", "--model.width", "0.5"]
QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
QUERIES = ["--queries", "[plain, 'dropout:p=0.1,n=2']"]
TIMEOUT = 300


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE",
                                                         "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")}
    env.update(WANDB_MODE="offline", MPLBACKEND="Agg", PYTHONWARNINGS="ignore", **extra)
    return env


def _start(args, **env):
    # A session of its own: on a timeout the whole group (rank 0 and the ranks it launched) is killed.
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"run.py timed out after {TIMEOUT} s:\n{out[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any rank still alive after rank 0 ended
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out[-5000:]
    return out


def _run(*args, **env) -> str:
    return _finish(_start(args, **env))


def _report(rd) -> dict:
    return json.loads((Path(rd) / "audit" / "report.json").read_text())


def _set_aside_caches(rd, name):
    for k in (0, 1, 2):
        d = Path(rd) / f"model_{k}" / "signals"
        if d.is_dir():
            d.rename(d.with_name(name))


def _same_numbers(a: dict, b: dict):
    assert set(a["attacks"]) == set(b["attacks"]) and a["attacks"]
    for name in a["attacks"]:
        assert set(a["attacks"][name]) == set(b["attacks"][name]), name
        for metric, value in a["attacks"][name].items():  # numbers, None, or [low, high] intervals
            other = b["attacks"][name][metric]
            if value is None or other is None:
                assert value is other, (name, metric)
            else:
                assert value == pytest.approx(other, abs=1e-6), (name, metric)
    for k in ("train_acc", "test_acc", "acc_gap"):
        assert a["target"][k] == pytest.approx(b["target"][k], abs=1e-6), k


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory):
    """`run.py fit` with two DDP processes: two references, then the audited target."""
    rd = tmp_path_factory.mktemp("ddp") / "run"
    out = _run("fit", "--run_dir", str(rd), *DATA, *MODEL, *QUIET, *DDP, "--trainer.max_epochs", "1")
    report = _report(rd)
    _set_aside_caches(rd, "signals_ddp_fit")  # the single-process audit below must query afresh
    return rd, report, out


@pytest.mark.slow
def test_ddp_fit_metrics_equal_the_single_process_audit(ddp_fit):
    rd, fit_report, out = ddp_fit
    assert "GLOBAL_RANK: 1" in out and out.count("report: ") == 1  # two ranks, one report
    assert fit_report["settings"]["audit_samples"] == 301 and fit_report["settings"]["population_samples"] == 181
    for k in (0, 1, 2):
        assert (rd / f"model_{k}" / "done.json").is_file()
    rows = (rd / "model_0" / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    audited = [r for r in rows[1:] if r.split(",")[header.index("attack/rmia_offline/auc")]]
    assert len(audited) == 1  # epoch 0, logged once (rank 0's logger)
    assert float(audited[0].split(",")[header.index("attack/rmia_offline/auc")]) == pytest.approx(
        fit_report["attacks"]["rmia_offline"]["auc"], abs=1e-6)

    _run("audit", "--run_dir", str(rd), *DATA, *MODEL, *QUIET)
    single = _report(rd)
    assert single["settings"]["signal_cache"] == {"misses": 3}
    _same_numbers(fit_report, single)
    # the reference signals the DDP fit cached (sharded, merged, written by rank 0) equal one process's
    for k in (1, 2):
        for ddp_file in (rd / f"model_{k}" / "signals_ddp_fit").glob("*.pt"):
            a = torch.load(ddp_file, weights_only=True)
            b = torch.load(rd / f"model_{k}" / "signals" / ddp_file.name, weights_only=True)
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_ddp_audit_equals_the_single_process_audit(ddp_fit):
    rd, _, _ = ddp_fit
    _run("audit", "--run_dir", str(rd), *DATA, *MODEL, *QUIET, *QUERIES)
    single = _report(rd)
    assert len(single["attacks"]) == 14
    _set_aside_caches(rd, "signals_single_grid")
    out = _run("audit", "--run_dir", str(rd), *DATA, *MODEL, *QUIET, *QUERIES, *DDP)
    assert "GLOBAL_RANK: 1" in out and out.count("report: ") == 1
    ddp = _report(rd)
    assert ddp["settings"]["signal_cache"] == {"misses": 6}  # every model x query computed sharded
    _same_numbers(single, ddp)
    # the DDP audit's caches are whole (every sample once) and serve a later single-process audit
    _run("audit", "--run_dir", str(rd), *DATA, *MODEL, *QUIET, *QUERIES)
    again = _report(rd)
    assert again["settings"]["signal_cache"] == {"hits": 6}
    _same_numbers(single, again)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_started_together_build_one_plan_and_equal_one_process(tmp_path):
    """Two "nodes" of one process each, started at once as SLURM or torchrun would: rank 0
    writes the plan, rank 1 reads it; the fit's metrics equal the single-process audit."""
    rd = tmp_path / "run"
    args = ["fit", "--run_dir", str(rd), *DATA, "--data.num_references", "0", *MODEL, *QUIET,
            "--trainer.max_epochs", "1", "--trainer.num_nodes", "2", "--trainer.devices", "1",
            "--trainer.strategy", "ddp"]
    port = str(_free_port())
    procs = [_start(args, NODE_RANK=str(node), MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for node in (0, 1)]
    outs = [_finish(p) for p in procs]
    assert "GLOBAL_RANK: 1" in outs[1] and outs[0].count("report: ") == 1 and "report: " not in outs[1]
    fit_report = _report(rd)
    _set_aside_caches(rd, "signals_ddp_fit")
    _run("audit", "--run_dir", str(rd), *DATA, "--data.num_references", "0", *MODEL, *QUIET)
    _same_numbers(fit_report, _report(rd))


# -- a rank that loses its peer ends in one line -----------------------------------------------
GLOO_LOST = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
             "[127.0.0.1]:18318. This is typically caused by a remote worker crashing.")


def test_a_rank_whose_peer_died_exits_with_one_line_that_says_a_rerun_resumes(monkeypatch, capsys):
    def lose_peer(args):
        try:
            raise RuntimeError(GLOO_LOST)
        except RuntimeError as err:  # as Lightning re-raises it: the backend error as the cause
            raise RuntimeError("the training step failed") from err

    monkeypatch.setattr(run, "_route", lose_peer)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run.main(["fit"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: rank 1 of 2: another process of this DDP run stopped")
    assert "Connection closed by peer" in err[0] and "rerun the same command" in err[0]


def test_other_errors_and_one_process_keep_their_traceback(monkeypatch):
    from core.errors import lost_peer

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lost_peer(RuntimeError("shape mismatch in the classifier")) is None  # a bug, not a lost peer
    assert lost_peer(ValueError("Connection closed by peer")) is None  # not a backend error
    assert "rank 0 of 2" in lost_peer(RuntimeError(GLOO_LOST))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert lost_peer(RuntimeError(GLOO_LOST)) is None  # no peer to lose: the traceback stays
    monkeypatch.setattr(run, "_route", lambda args: (_ for _ in ()).throw(RuntimeError(GLOO_LOST)))
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        run.main(["fit"])


@pytest.mark.slow
def test_the_ddp_kill_matrix_resumes_byte_identically(tmp_path):
    # tests/ddp_kill_matrix.py: rank 0 or rank 1 killed with -9 during the target's training and
    # during its audit; the survivor's one line; the rerun's report.json byte-identical to an
    # uninterrupted DDP run's (about 3 minutes on 2 cores).
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_kill_matrix.py"), "--keep", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    rows = [line for line in proc.stdout.splitlines() if " during the target's " in line]
    assert proc.returncode == 0 and len(rows) == 4, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert all(row.split()[-1] == "identical" and "exit 1" in row for row in rows), proc.stdout
    for i in range(4):
        lines = [line for line in (tmp_path / f"kill_{i}.log").read_text().splitlines() if line.strip()]
        assert "rerun the same command" in lines[-1] and not any("Traceback" in line for line in lines)
