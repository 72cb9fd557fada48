"""A rerun trusts nothing it has not checked: swapped model folders, lost reports, lost or
changed checkpoints, changed settings on a finished run, SIGTERM / SIGINT, and a run
directory or a batch that cannot work (docs/reliability.md)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import run
from test_integrity import QUIET, SMALL, audit, fit, flip_a_bit, last_line, snapshot

ROOT = Path(run.__file__).resolve().parent


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished digits run (two ANN references and the ANN target, 2 epochs), copied per test."""
    rd = tmp_path_factory.mktemp("finished") / "run"
    assert fit(rd, "--trainer.max_epochs", "2") == 0
    # caches every model's signals; audit/ keeps the report that fit wrote
    assert audit(rd, "--report_dir", str(rd.parent / "offline_report")) == 0
    return rd


@pytest.fixture
def rd(finished, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def swap(rd: Path, a: str, b: str) -> None:
    (rd / a).rename(rd / "x")
    (rd / b).rename(rd / a)
    (rd / "x").rename(rd / b)


# -- 1. swapped model folders -----------------------------------------------------------------
@pytest.mark.parametrize("command", ["audit", "fit"])
def test_swapped_model_folders_are_refused_even_when_their_caches_hit(rd, capsys, command):
    swap(rd, "model_1", "model_2")  # each folder's caches still match its own checkpoint
    before = snapshot(rd)
    code = audit(rd) if command == "audit" else fit(rd, "--trainer.max_epochs", "2")
    assert code == 2
    line = last_line(capsys)
    assert line.startswith("error: ") and "model_1/" in line and "model_2/" in line and "swapped" in line, line
    assert snapshot(rd) == before


def test_a_cache_entry_records_the_model_index_and_membership_row_it_was_made_for(rd):
    entries = [json.loads(p.read_text()) for p in (rd / "model_1" / "signals").glob("*.json")]
    assert entries and all(e["model_index"] == 1 and len(e["membership_sha256"]) == 64 for e in entries)
    from audit.cache import cached_signals
    from datamodules import MembershipDataModule

    dm = MembershipDataModule(num_references=2, run_dir=str(rd), model_index=0)
    dm.prepare_data()
    done = json.loads((rd / "model_1" / "done.json").read_text())
    done["model_index"] = 2  # a done.json that claims another model
    (rd / "model_1" / "done.json").write_text(json.dumps(done))
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="swapped"):
        cached_signals(rd, 1, dm, "plain")


# -- 2. a finished model is re-verified on every rerun ------------------------------------------
@pytest.mark.parametrize("damage", ["report.json deleted", "report.json truncated", "report.md deleted",
                                    "roc.png truncated"])
def test_a_lost_report_is_rebuilt_from_the_cache_without_training(rd, monkeypatch, capsys, damage):
    out = rd / "audit"
    originals = {name: (out / name).read_bytes() for name in ("report.json", "report.md", "roc.png")}
    untouched = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in rd.rglob("*")
                 if p.is_file() and ("checkpoints" in p.parts or p.name == "done.json" or p.parent == rd)}
    name, how = damage.split(" ")
    if how == "deleted":
        (out / name).unlink()
    else:
        (out / name).write_bytes(originals[name][: len(originals[name]) // 2])

    def no_query(*args, **kwargs):
        raise AssertionError("a model was queried: the report must come from the signal cache")

    import audit.cache
    import callbacks.membership_attack

    monkeypatch.setattr(callbacks.membership_attack, "compute_signals", no_query)
    monkeypatch.setattr(audit.cache, "compute_signals", no_query)
    assert fit(rd, "--trainer.max_epochs", "2") == 0
    assert "rebuilding" in capsys.readouterr().err
    for file, data in originals.items():
        assert (out / file).read_bytes() == data, file  # byte for byte the report the run wrote
    # no training: checkpoints, done.json and the plan are the same files, not rewritten
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in untouched} == untouched


@pytest.mark.parametrize("how", ["deleted", "flipped bit"])
def test_a_lost_checkpoint_names_a_retrain_command_that_retrains_only_that_model(rd, capsys, how):
    ckpt = rd / "model_1" / "checkpoints" / "last.ckpt"
    if how == "deleted":
        ckpt.unlink()
    else:
        flip_a_bit(ckpt)
    before = snapshot(rd)
    assert fit(rd, "--trainer.max_epochs", "2") == 2
    line = last_line(capsys)
    assert str(ckpt) in line and "run.py fit --data.model_index 1 --retrain true" in line, line
    assert snapshot(rd) == before
    old_done = (rd / "model_1" / "done.json").read_bytes()
    # the command it names: model 1 trains again, nothing else is touched, the old folder is kept
    assert fit(rd, "--trainer.max_epochs", "2", "--data.model_index", "1", "--retrain", "true") == 0
    replaced = list((rd / "replaced").iterdir())
    assert [p.name.split(".")[0] for p in replaced] == ["model_1"]
    assert (replaced[0] / "done.json").read_bytes() == old_done
    after = snapshot(rd)
    for p, v in before.items():
        if "model_1" not in p.relative_to(rd).parts[0]:
            assert after[p] == v, p  # the plan, the other models, the report and their logs
    assert json.loads((rd / "model_1" / "done.json").read_text())["model_index"] == 1
    assert fit(rd, "--trainer.max_epochs", "2") == 0  # the run is whole again
    assert audit(rd) == 0


def test_retrain_needs_a_model_index(rd, capsys):
    before = snapshot(rd)
    assert fit(rd, "--trainer.max_epochs", "2", "--retrain", "true") == 2
    assert "retrain=true needs --data.model_index" in last_line(capsys)
    assert snapshot(rd) == before


# -- 3. changed settings on a finished model ------------------------------------------------------
@pytest.mark.parametrize("flags, named", [
    (["--trainer.max_epochs", "4"], ["trainer.max_epochs: it has 2, this run asks for 4"]),
    (["--model.lr", "0.1"], ["model.lr: it has 0.003, this run asks for 0.1"]),
    (["--trainer.max_epochs", "4", "--model.lr", "0.1"], ["trainer.max_epochs", "model.lr"]),
    (["--data.batch_size", "32"], ["data.batch_size: it has 64, this run asks for 32"]),
])
def test_other_settings_on_a_finished_run_are_refused_naming_each(rd, capsys, flags, named):
    before = snapshot(rd)
    assert fit(rd, "--trainer.max_epochs", "2", *flags) == 2
    line = last_line(capsys)
    assert line.startswith("error: ") and all(n in line for n in named) and "new --run_dir" in line, line
    assert snapshot(rd) == before


# -- 4. SIGTERM and SIGINT outside SLURM ----------------------------------------------------------
ARGS = ["run.py", "fit", *QUIET, *SMALL, "--trainer.max_epochs", "2"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNN_MIA_"))}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **extra}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    rd = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = subprocess.run([sys.executable, *ARGS, "--run_dir", str(rd)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return (rd / "audit" / "report.json").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_fit_non_zero_and_a_rerun_resumes_to_the_same_report(tmp_path, uninterrupted, sig, code):
    rd = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, *ARGS, "--run_dir", str(rd)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env=_env(SNN_MIA_PAUSE_AT="batch:model_0:1:2", SNN_MIA_PAUSE_S="120"))
    lines = []
    for line in proc.stderr:  # the target, mid-epoch 1: its epoch-0 checkpoint is on disk
        lines.append(line)
        if line.startswith("pausing"):
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait(60) == code, "".join(lines) + rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("error: stopped by") and "rerun the same command to resume" in last, rest
    assert not (rd / "model_0" / "done.json").exists()
    again = subprocess.run([sys.executable, *ARGS, "--run_dir", str(rd)], cwd=ROOT, env=_env(), capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming model_0" in again.stderr
    assert (rd / "audit" / "report.json").read_bytes() == uninterrupted


def test_under_slurm_the_signal_handlers_are_lightnings(monkeypatch):
    from training.fit import stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "audit")
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is before  # requeue: Lightning's handling, as before
    monkeypatch.delenv("SLURM_NTASKS")
    with stop_on_signals() as s:
        assert signal.getsignal(signal.SIGTERM) == s._stop
    assert signal.getsignal(signal.SIGTERM) is before


# -- 5. a run directory or a batch that cannot work -----------------------------------------------
def test_a_run_dir_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "run"
    path.write_text("a file")
    assert fit(path, "--trainer.max_epochs", "1") == 2
    assert "is an existing file" in last_line(capsys)
    assert path.read_text() == "a file" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_dir_below_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert fit(tmp_path / "f" / "run", "--trainer.max_epochs", "1") == 2
    assert "is a file, not a folder" in last_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only bind mount (chmod does not stop root; a read-only mount does)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root and mount rights): {mounted.stderr.strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remount.stderr.strip()}")
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_a_run_dir_that_cannot_be_written_is_refused(read_only_dir, capsys):
    assert fit(read_only_dir / "run", "--trainer.max_epochs", "1") == 2
    line = last_line(capsys)
    assert "cannot be written" in line and "read-only" in line, line
    assert list(read_only_dir.iterdir()) == []


def test_a_time_step_count_that_cannot_fit_in_memory_is_refused_before_anything_is_written(tmp_path, capsys):
    rd = tmp_path / "run"
    assert fit(rd, "--model.kind", "snn", "--model.T", "100000", "--trainer.max_epochs", "1") == 2
    line = last_line(capsys)
    assert line.startswith("error: model.T=100000 with data.batch_size=64 needs about") and "GB" in line, line
    assert not rd.exists()


def test_the_memory_estimate_grows_with_t_and_the_batch():
    from datamodules import MembershipDataModule
    from lightning_modules import Classifier
    from training.memory import check_batch_memory, floats_per_step

    dm = MembershipDataModule(num_references=2)
    model = Classifier(kind="snn", T=4, width=0.25, num_classes=dm.num_classes, input_shape=dm.input_shape)
    n_in, n_acts, n_max = floats_per_step(model)
    assert n_in == 64 and n_acts > n_max > 0
    train = 4 * 4 * 64 * (n_in + n_acts)  # T=4, data.batch_size=64, float32
    query = 4 * 4 * 256 * (n_in + 2 * n_max)  # data.eval_batch_size=256
    check_batch_memory(model, dm, available=max(train, query))  # fits: no error
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.T=4 with data.batch_size=64"):
        check_batch_memory(model, dm, available=train - 1)
    with pytest.raises(ConfigError, match="model.T=4 with data.eval_batch_size=256"):
        check_batch_memory(model, dm, available=min(query - 1, train))
    model.T = 8
    with pytest.raises(ConfigError, match="model.T=8"):
        check_batch_memory(model, dm, available=max(train, query))


def test_an_out_of_memory_error_past_the_estimate_is_one_line(tmp_path, capsys, monkeypatch):
    import training.cli

    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 209715200000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(training.cli, "fit_run", oom)
    assert fit(tmp_path / "run", "--trainer.max_epochs", "1") == 2
    line = last_line(capsys)
    assert line.startswith("error: out of memory") and "lower model.T" in line, line
