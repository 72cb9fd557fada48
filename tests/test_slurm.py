"""SLURM scripts and submission (cluster/slurm.py), on a machine without SLURM.

sbatch, srun and scontrol are fakes on PATH that record their arguments; SLURM's environment
variables are set by hand. What is checked: the directives and commands of the generated scripts,
that bash expands them as meant, the afterok chain built from `sbatch --parsable` ids, that Lightning
detects SLURM with what the directives imply, and that a preempted, requeued reference resumes.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.plugins.environments import SLURMEnvironment

from cluster.slurm import ROOT, SlurmError, SlurmOptions, generate, submit_main

OPTIONS = dict(partition="gpu", account="proj", time="02:00:00", gpus_per_node=2, array_parallelism=2,
               cpus_per_task=4, mem="16G", setup=["source .venv/bin/activate"])


def directives(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]


def srun_words(text: str) -> list[str]:
    """The srun command of a script, split as a shell would (variables left unexpanded)."""
    line = text[text.index("\nsrun ") + 1:].split("\n\n")[0].replace("\\\n", " ")
    return shlex.split(line)


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def fake(bin_dir: Path, name: str, body: str) -> None:
    """An executable `name` that records its arguments, one per line, in bin_dir/<name>.<n>."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"""#!/bin/bash
dir="$(dirname "$0")"
n=$(( $(cat "$dir/{name}.count" 2>/dev/null || echo 1000) + 1 ))
echo $n > "$dir/{name}.count"
printf '%s\\n' "$@" > "$dir/{name}.$n"
{body}
""")
    path.chmod(0o755)


def calls(bin_dir: Path, name: str) -> list[list[str]]:
    files = sorted(bin_dir.glob(f"{name}.[0-9]*"), key=lambda p: int(p.suffix[1:]))
    return [p.read_text().splitlines() for p in files]


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """sbatch that prints '<id>;cluster' like `--parsable` (ids 1001, 1002, ...); FAIL_AT=n fails call n."""
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "sbatch", """
if [ "$n" = "${FAKE_SBATCH_FAIL_AT:-}" ]; then echo "sbatch: error: Invalid account or account/partition combination" >&2; exit 1; fi
test -f "${@: -1}" || { echo "sbatch: error: no script ${@: -1}" >&2; exit 1; }
echo "$n;cluster"
""")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


# -- the scripts ------------------------------------------------------------------------------
def test_scripts_have_the_directives_and_commands(tmp_path):
    args = ["--config", "configs/default.yaml", "--run_dir", "runs/small", "--trainer.max_epochs", "3"]
    scripts = generate(args, "runs/small", 4, SlurmOptions(**OPTIONS, workdir=str(ROOT)))
    assert set(scripts) == {"references.sbatch", "target.sbatch"}
    refs, target = scripts["references.sbatch"], scripts["target.sbatch"]
    logs = f"{ROOT}/runs/small/slurm"
    for text in (refs, target):
        d = directives(text)
        assert text.startswith("#!/bin/bash\n")
        assert {"--nodes=1", "--ntasks-per-node=2", "--gres=gpu:2", "--cpus-per-task=4", "--mem=16G",
                "--partition=gpu", "--account=proj", "--time=02:00:00", f"--chdir={ROOT}",
                "--signal=SIGUSR1@90", "--requeue", "--open-mode=append"} <= set(d)
        assert "source .venv/bin/activate" in text and "export WANDB_MODE=offline" in text
        assert "wandb sync runs/small/model_*/wandb/offline-run-*" in text
        words = srun_words(text)
        assert words[:4] == ["srun", sys.executable, "run.py", "fit"] and words[4:10] == args[:6]
        assert (flag(words, "--trainer.devices"), flag(words, "--trainer.num_nodes")) == ("2", "1")
        assert flag(words, "--trainer.accelerator") == "gpu" and flag(words, "--trainer.strategy") == "ddp"
    d = directives(refs)
    assert "--array=1-4%2" in d and "--job-name=small-refs" in d and f"--output={logs}/%x-%A_%a.out" in d
    assert flag(srun_words(refs), "--data.model_index") == "$SLURM_ARRAY_TASK_ID"
    d = directives(target)
    assert not any(x.startswith("--array") for x in d) and "--job-name=small-target" in d
    assert f"--output={logs}/%x-%j.out" in d and "--kill-on-invalid-dep=yes" in d
    assert flag(srun_words(target), "--data.model_index") == "0"


@pytest.mark.parametrize("nodes, gpus, tasks, strategy", [(1, 1, 1, None), (1, 4, 4, "ddp"), (2, 4, 4, "ddp"),
                                                           (2, 0, 1, "ddp")])
def test_nodes_and_gpus_set_tasks_devices_and_strategy(nodes, gpus, tasks, strategy):
    text = generate([], "runs/x", 2, SlurmOptions(nodes=nodes, gpus_per_node=gpus))["target.sbatch"]
    d, words = directives(text), srun_words(text)
    assert f"--nodes={nodes}" in d and f"--ntasks-per-node={tasks}" in d  # one rank per device: Lightning's rule
    assert (f"--gres=gpu:{gpus}" in d) == (gpus > 0)
    assert flag(words, "--trainer.devices") == str(tasks) and flag(words, "--trainer.num_nodes") == str(nodes)
    assert flag(words, "--trainer.accelerator") == ("gpu" if gpus else "cpu")
    assert (flag(words, "--trainer.strategy") if "--trainer.strategy" in words else None) == strategy
    # nothing cluster-specific is built in: no partition, account, time unless given
    assert not any(x.split("=")[0] in ("--partition", "--account", "--time", "--qos") for x in d)


def test_audit_job_runs_one_process_after_the_target():
    o = SlurmOptions(nodes=2, gpus_per_node=4, audit_queries="[plain, flip]", audit_latencies="[1, 2, 4]")
    text = generate(["--run_dir", "runs/x"], "runs/x", 2, o)["audit.sbatch"]
    d, words = directives(text), srun_words(text)
    assert {"--nodes=1", "--ntasks-per-node=1", "--gres=gpu:1", "--kill-on-invalid-dep=yes"} <= set(d)
    assert not any(x.startswith("--signal") for x in d)  # Lightning handles SIGUSR1 only inside fit
    assert words[:4] == ["srun", sys.executable, "run.py", "audit"]
    assert flag(words, "--queries") == "[plain, flip]" and flag(words, "--latencies") == "[1, 2, 4]"
    assert flag(words, "--trainer.devices") == "1" and "--trainer.strategy" not in words


def test_bash_expands_the_array_task_id_and_keeps_quoted_values(tmp_path):
    """Run references.sbatch as SLURM would run array task 3, with a fake srun that records argv."""
    args = ["--run_dir", str(tmp_path / "run"), "--references", "{kind: ann, width: 0.5}"]
    text = generate(args, str(tmp_path / "run"), 4, SlurmOptions(gpus_per_node=0))["references.sbatch"]
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "srun", "")
    script = tmp_path / "references.sbatch"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "3"}
    subprocess.run(["bash", "-n", str(script)], check=True)
    subprocess.run(["bash", str(script)], check=True, env=env, cwd=tmp_path)
    (argv,) = calls(bin_dir, "srun")
    assert argv[:3] == [sys.executable, "run.py", "fit"]
    assert flag(argv, "--references") == "{kind: ann, width: 0.5}" and flag(argv, "--data.model_index") == "3"


# -- submission -------------------------------------------------------------------------------
def small_study(tmp_path) -> list[str]:
    return ["--run_dir", str(tmp_path / "run"), "--data.num_references", "4", "--trainer.max_epochs", "2",
            "--workdir", str(tmp_path), "--partition", "gpu", "--time", "30", "--array_parallelism", "2"]


def test_submit_chains_references_target_and_audit(tmp_path, fake_sbatch, capsys):
    assert submit_main([*small_study(tmp_path), "--audit", "--submit"]) == 0
    out = tmp_path / "run" / "slurm"
    refs, target, audit = calls(fake_sbatch, "sbatch")
    assert refs == ["--parsable", str(out / "references.sbatch")]
    assert target == ["--parsable", "--dependency=afterok:1001", str(out / "target.sbatch")]
    assert audit == ["--parsable", "--dependency=afterok:1002", str(out / "audit.sbatch")]
    assert out.is_dir()  # the log folder: SLURM does not create it, and a job without it logs nowhere
    assert capsys.readouterr().out.strip() == "references=1001 target=1002 audit=1003"
    assert "--array=1-4%2" in directives((out / "references.sbatch").read_text())


def test_without_references_the_target_has_no_dependency(tmp_path, fake_sbatch):
    args = [*small_study(tmp_path), "--data.num_references", "0", "--submit"]
    assert submit_main(args) == 0
    assert calls(fake_sbatch, "sbatch") == [["--parsable", str(tmp_path / "run" / "slurm" / "target.sbatch")]]


def test_a_failed_sbatch_stops_the_chain_and_names_what_to_cancel(tmp_path, fake_sbatch, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_SBATCH_FAIL_AT", "1002")
    assert submit_main([*small_study(tmp_path), "--audit", "--submit"]) == 1
    assert len(calls(fake_sbatch, "sbatch")) == 2  # the audit is not submitted after the failed target
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Invalid account" in last and "scancel 1001" in last


def test_default_prints_the_scripts_and_submits_nothing(tmp_path, fake_sbatch, capsys):
    assert submit_main(small_study(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "# ==> references.sbatch <==" in out and "# ==> target.sbatch <==" in out
    assert f"srun {sys.executable} " in out  # the Python that ran submit, not whatever `python` is on PATH
    # nothing submitted; only the log folder that the scripts' --output points to is made
    assert calls(fake_sbatch, "sbatch") == [] and [p.name for p in (tmp_path / "run").iterdir()] == ["slurm"]


def test_out_writes_the_scripts_without_submitting(tmp_path, fake_sbatch):
    assert submit_main([*small_study(tmp_path), "--out", str(tmp_path / "scripts")]) == 0
    assert sorted(p.name for p in (tmp_path / "scripts").iterdir()) == ["references.sbatch", "target.sbatch"]
    assert calls(fake_sbatch, "sbatch") == []


@pytest.mark.parametrize("flags, key", [
    (["--time", "1:75:00"], "time='1:75:00'"),
    (["--time", "2h"], "time='2h'"),
    (["--gpus", "-1"], "gpus_per_node=-1"),
    (["--nodes", "0"], "nodes=0"),
    (["--nodes", "two"], "--nodes"),
    (["--array_parallelism", "0"], "array_parallelism=0"),
    (["--mem", "lots"], "mem='lots'"),
    (["--data.num_references", "3"], "data.num_references=3"),
    (["--partiton", "gpu"], "--partiton"),
    (["--data.model_index", "2"], "--data.model_index"),
    (["--trainer.devices", "4"], "--trainer.devices"),
    (["--trainer.default_root_dir", "/scratch"], "trainer.default_root_dir"),
    (["--config", "configs/nope.yaml"], "configs/nope.yaml"),
    (["--references", "{kind: ann"], "references"),
    (["--job_name", "bash"], "job_name='bash'"),
])
def test_bad_values_end_in_one_line_and_nothing_is_written(tmp_path, fake_sbatch, capsys, flags, key):
    assert submit_main([*small_study(tmp_path), *flags, "--submit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # our own checks say what is allowed; run.py's parser (the same as fit's) points to --help
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], err
    assert "allowed" in err[0] or "see --help" in err[0], err
    assert not (tmp_path / "run").exists() and calls(fake_sbatch, "sbatch") == []


@pytest.mark.parametrize("flags, said", [
    (["--audit_queries", "[nope]"], "error: audit.sbatch: run.py audit: queries=['nope']"),
    (["--audit_latencies", "[0]"], "error: audit.sbatch: run.py audit: latencies=[0]"),
    (["--audit_queries", "[plain"], "error: audit.sbatch: run.py audit:"),
])
def test_audit_flags_are_checked_before_any_script_is_written(tmp_path, fake_sbatch, capsys, flags, said):
    import time

    start = time.monotonic()
    assert submit_main([*small_study(tmp_path), *flags, "--out", str(tmp_path / "scripts"), "--submit"]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(said), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "scripts").exists()
    assert calls(fake_sbatch, "sbatch") == []


def test_slurm_config_file_and_flags_over_it(tmp_path):
    example = ROOT / "configs" / "slurm" / "example.yaml"
    args = ["--slurm_config", str(example), "--workdir", str(tmp_path), "--run_dir", "runs/k64",
            "--data.num_references", "64"]
    assert submit_main([*args, "--out", str(tmp_path / "a")]) == 0
    d = directives((tmp_path / "a" / "references.sbatch").read_text())
    assert {"--partition=gpu", "--time=12:00:00", "--array=1-64%16", "--gres=gpu:1", "--mem=32G"} <= set(d)
    assert submit_main([*args, "--time", "4:00:00", "--array_parallelism", "8", "--out", str(tmp_path / "b")]) == 0
    d = directives((tmp_path / "b" / "references.sbatch").read_text())
    assert "--time=4:00:00" in d and "--array=1-64%8" in d
    # YAML reads an unquoted 12:00:00 as the integer 43200 (30 days to SLURM): the text is kept
    unquoted = tmp_path / "unquoted.yml"
    unquoted.write_text("time: 12:00:00\nsetup: module load cuda\n")
    assert submit_main([*args, "--slurm_config", str(unquoted), "--out", str(tmp_path / "c")]) == 0
    text = (tmp_path / "c" / "target.sbatch").read_text()
    assert "--time=12:00:00" in directives(text) and "\nmodule load cuda\n" in text


def test_slurm_config_with_an_unknown_key_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("partiton: gpu\n")
    assert submit_main(["--slurm_config", str(bad), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "partiton" in err and "allowed" in err


def test_the_study_is_read_from_run_py_configs_in_order(tmp_path, capsys):
    """run_dir and K come from configs/default.yaml, then each --config, then flags, as in run.py."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run_dir: runs/from_file\ndata:\n  num_references: 6\ntrainer:\n  strategy: fsdp\n")
    assert submit_main(["--config", str(cfg), "--gpus", "2", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--array=1-6" in out and "runs/from_file/model_k" in out
    assert "--trainer.strategy" not in out  # the config's own strategy is kept, not replaced by ddp
    with pytest.raises(SlurmError, match="allowed"):
        SlurmOptions(gpus_per_node=True)


# -- Lightning under SLURM --------------------------------------------------------------------
def slurm_env(monkeypatch, *, ntasks=1, per_node=1, nodes=1, procid=0, array_task=None, name="study-refs"):
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": name, "SLURM_NTASKS": ntasks, "SLURM_NTASKS_PER_NODE": per_node,
           "SLURM_NNODES": nodes, "SLURM_PROCID": procid, "SLURM_LOCALID": procid % per_node,
           "SLURM_NODEID": procid // per_node, "SLURM_NODELIST": "node[001-002]"}
    if array_task is not None:
        env |= {"SLURM_ARRAY_JOB_ID": "4241", "SLURM_ARRAY_TASK_ID": array_task}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    for k in ("MASTER_ADDR", "MASTER_PORT"):  # Lightning writes these into os.environ: setenv first so
        monkeypatch.setenv(k, "")               # that monkeypatch removes them again after the test
        monkeypatch.delenv(k)


def test_lightning_detects_slurm_as_the_generated_directives_set_it_up(tmp_path, monkeypatch):
    """Task 3 of 4 (2 nodes x 2 GPUs): the srun command of the generated script, given to run.py, builds a
    trainer whose cluster environment is SLURM's, with the ranks SLURM set; GPUs replaced by CPUs here."""
    from training.cli import cli_main

    text = generate(["--run_dir", str(tmp_path / "run")], str(tmp_path / "run"), 2,
                    SlurmOptions(nodes=2, gpus_per_node=2))["target.sbatch"]
    d = directives(text)
    per_node, nodes = (int(next(x for x in d if x.startswith(f"--{k}=")).split("=")[1]) for k in ("ntasks-per-node", "nodes"))
    words = srun_words(text)
    args = [w if w != "gpu" else "cpu" for w in words[words.index("fit") + 1:]]
    slurm_env(monkeypatch, ntasks=per_node * nodes, per_node=per_node, nodes=nodes, procid=3)
    assert SLURMEnvironment.detect()
    cli = cli_main(args, run=False)
    env = cli.trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue  # SIGUSR1 -> hpc checkpoint + requeue
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert (cli.trainer.num_nodes, cli.trainer.num_devices) == (2, 2) and env.main_address == "node001"
    # the check Lightning's launcher makes before fit: devices = --ntasks-per-node, num_nodes = --nodes
    env.validate_settings(num_devices=cli.trainer.num_devices, num_nodes=cli.trainer.num_nodes)
    with pytest.raises(ValueError, match="ntasks-per-node=2"):
        env.validate_settings(num_devices=1, num_nodes=2)
    # job name 'bash' turns detection off (why job_name='bash' is refused)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    assert not SLURMEnvironment.detect()


class Preempt(L.Callback):
    """SLURM's warning signal arrives in the second epoch; then the job is killed (the exception)."""

    def on_train_batch_end(self, trainer, *args):
        if trainer.current_epoch == 1:
            if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):  # SIGUSR1 would end pytest
                raise AssertionError("Lightning set no SIGUSR1 handler: SLURM auto-requeue is off")
            os.kill(os.getpid(), signal.SIGUSR1)  # what `--signal=SIGUSR1@90` sends 90 s before the limit
            raise Preempted


class Preempted(Exception):
    pass


class RecordStart(L.Callback):
    seen: list = []

    def on_train_start(self, trainer, pl_module):
        env = trainer._accelerator_connector.cluster_environment
        RecordStart.seen.append((trainer.current_epoch, trainer.global_step, type(env).__name__))


def test_a_requeued_reference_resumes_from_its_own_checkpoint(tmp_path, monkeypatch, capsys):
    """Array task 1 is preempted in epoch 2 of 2: Lightning saves model_1/hpc_ckpt_1.ckpt and calls
    `scontrol requeue 4241_1`; the requeued task, same command, resumes in model_1/ and finishes."""
    import run

    bin_dir = tmp_path / "bin"
    fake(bin_dir, "scontrol", "")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    slurm_env(monkeypatch, array_task=1)
    rd = tmp_path / "run"
    args = ["fit", "--run_dir", str(rd), "--data.model_index", "1", "--model.kind", "ann", "--model.width", "0.25",
            "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]
    with pytest.raises(Preempted):
        run.main([*args, f"--trainer.callbacks+={__name__}.Preempt"])
    model = rd / "model_1"
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # Lightning put the old handler back
    assert calls(bin_dir, "scontrol") == [["requeue", "4241_1"]]
    assert (model / "hpc_ckpt_1.ckpt").is_file() and (model / "checkpoints" / "last.ckpt").is_file()
    assert not (model / "done.json").exists() and not (rd / "model_0").exists()

    RecordStart.seen = []
    assert run.main([*args, f"--trainer.callbacks+={__name__}.RecordStart"]) == 0
    assert "resuming model_1" in capsys.readouterr().err
    (epoch, step, env), = RecordStart.seen
    assert env == "SLURMEnvironment" and epoch == 1 and step >= 3  # not from scratch: epoch 1 was done
    assert json.loads((model / "done.json").read_text())["epochs"] == 2
    assert not list(model.glob("hpc_ckpt_*"))  # the requeue checkpoint goes once the model is done
    # SLURM's time-limit signal may still come after training finished: it must not kill the job
    # (exit 138, FAILED, dependents cancelled); the process goes on and ends normally.
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert "after training finished" in capsys.readouterr().err


def test_run_py_submit_prints_the_scripts(tmp_path, capsys):
    import run

    assert run.main(["submit", "--run_dir", str(tmp_path / "rd"), "--workdir", str(tmp_path),
                     "--data.num_references", "2"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=1-2" in out and "--data.model_index \"$SLURM_ARRAY_TASK_ID\"" in out
    assert "--data.model_index 0" in out
    assert [p.name for p in (tmp_path / "rd").iterdir()] == ["slurm"]  # only the log folder


def test_resubmit_submits_only_the_unfinished_models(tmp_path, fake_sbatch, capsys):
    rd = tmp_path / "run"
    for k in (1, 3):
        (rd / f"model_{k}").mkdir(parents=True)
        (rd / f"model_{k}" / "done.json").write_text("{}")
    args = [*small_study(tmp_path), "--out", str(tmp_path / "a")]
    assert submit_main(args) == 0
    d = directives((tmp_path / "a" / "references.sbatch").read_text())
    assert "--array=2,4" in d  # K = 4: only models 2 and 4 are left (2 tasks, so no %2 cap needed)
    assert "finished earlier, not submitted: model_1, model_3" in capsys.readouterr().err
    for k in (0, 2, 4):
        (rd / f"model_{k}").mkdir(parents=True, exist_ok=True)
        (rd / f"model_{k}" / "done.json").write_text("{}")
    assert submit_main([*small_study(tmp_path), "--submit"]) == 0
    assert calls(fake_sbatch, "sbatch") == []  # everything finished: nothing queued
    assert "nothing to submit" in capsys.readouterr().err


def test_cpus_and_memory_default_from_the_loader_workers(tmp_path):
    args = [*small_study(tmp_path), "--data.num_workers", "7", "--out", str(tmp_path / "a")]
    assert submit_main(args) == 0
    d = directives((tmp_path / "a" / "target.sbatch").read_text())
    assert "--cpus-per-task=8" in d and "--mem=32G" in d
    assert submit_main([*args, "--cpus_per_task", "2", "--mem", "5G"]) == 0
    d = directives((tmp_path / "a" / "target.sbatch").read_text())
    assert "--cpus-per-task=2" in d and "--mem=5G" in d


def test_missing_data_is_refused_before_anything_is_queued(tmp_path, fake_sbatch, capsys):
    args = [*small_study(tmp_path), "--data.dataset", "cifar10", "--data.root", str(tmp_path / "no_data"), "--submit"]
    assert submit_main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cifar10" in last and "no_data" in last
    assert calls(fake_sbatch, "sbatch") == []
