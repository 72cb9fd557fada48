"""A run directory as a hostile user or a cluster leaves it: tampered files, two processes on
one model, a resume with other settings, logs, and bad input that must change nothing."""

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

import run

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SMALL = ["--data.num_references", "2", "--model.width", "0.25", "--model.kind", "ann"]
ROOT = Path(run.__file__).resolve().parent


def fit(rd, *flags):
    return run.main(["fit", "--run_dir", str(rd), *QUIET, *SMALL, *flags])


def audit(rd, *flags):
    return run.main(["audit", "--run_dir", str(rd), *QUIET, *SMALL, *flags])


def snapshot(rd: Path) -> dict:
    """Every file's bytes and modification time; .lock files are the lock holders' notes (who
    holds model_<k>/ now), rewritten by whoever takes the lock, and hold no data."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(rd.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def last_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished digits run (two ANN references and the ANN target, 2 epochs), copied per test."""
    rd = tmp_path_factory.mktemp("finished") / "run"
    assert fit(rd, "--trainer.max_epochs", "2") == 0
    assert audit(rd) == 0  # caches every model's signals
    return rd


@pytest.fixture
def rd(finished, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def flip_a_bit(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


# -- tampering --------------------------------------------------------------------------------
def test_a_flipped_bit_in_the_plan_is_refused(rd, capsys):
    from datamodules.plan import load_plan, plan_tensors, save_plan

    plan = load_plan(rd)
    plan.membership[0, 0] = ~plan.membership[0, 0]  # one membership bit, re-saved as a valid file
    import torch as t

    t.save(plan_tensors(plan), rd / "plan.pt")
    before = snapshot(rd)
    assert audit(rd) == 2
    line = last_line(capsys)
    assert "plan.pt" in line and "does not match" in line, line
    assert snapshot(rd) == before
    del save_plan


def test_a_deleted_plan_json_is_refused_and_never_redrawn(rd, capsys):
    (rd / "plan.json").unlink()
    before = snapshot(rd)
    assert fit(rd, "--trainer.max_epochs", "2", "--data.seed", "1") == 2  # another seed: would redraw the plan
    line = last_line(capsys)
    assert "plan.json" in line and "never drawn again" in line, line
    assert snapshot(rd) == before


def test_trained_models_without_any_plan_are_refused(rd, capsys):
    (rd / "plan.json").unlink()
    (rd / "plan.pt").unlink()
    before = snapshot(rd)
    assert fit(rd, "--trainer.max_epochs", "2") == 2
    assert "no membership plan" in last_line(capsys)
    assert snapshot(rd) == before


@pytest.mark.parametrize("how", ["flipped bit", "truncated", "edited and re-saved"])
def test_a_changed_checkpoint_is_refused(rd, capsys, how):
    path = rd / "model_2" / "checkpoints" / "last.ckpt"
    if how == "flipped bit":
        flip_a_bit(path)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: 5000])
    else:
        ckpt = torch.load(path, weights_only=True)
        key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
        ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01
        torch.save(ckpt, path)
    report = (rd / "audit" / "report.json").read_bytes()
    assert audit(rd) == 2
    line = last_line(capsys)
    assert str(path) in line and ("hash" in line or "changed" in line), line
    assert (rd / "audit" / "report.json").read_bytes() == report


@pytest.mark.parametrize("how", ["flipped bit", "edited values", "nan", "wrong shape", "missing key", "garbage"])
def test_a_damaged_signal_cache_is_recomputed_never_used(rd, how):
    clean = json.loads((rd / "audit" / "report.json").read_text())["attacks"]
    path = next((rd / "model_1" / "signals").glob("*.pt"))
    original = torch.load(path, weights_only=True)
    tensors = {k: v.clone() for k, v in original.items()}
    if how == "flipped bit":
        flip_a_bit(path, offset=len(path.read_bytes()) - 200)
    elif how == "garbage":
        path.write_bytes(b"not a tensor file")
    else:
        if how == "edited values":
            tensors["audit/rescaled_logit"] = tensors["audit/rescaled_logit"] + 3.0
        elif how == "nan":
            tensors["audit/rescaled_logit"][0, 0] = float("nan")
        elif how == "wrong shape":
            tensors["audit/rescaled_logit"] = tensors["audit/rescaled_logit"][:, :-1]
        else:
            del tensors["population/correct"]
        torch.save(tensors, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert audit(rd) == 0
    assert any("signal cache" in str(w.message) and "recomputing" in str(w.message) for w in caught)
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert report["attacks"] == clean  # the recomputed signals, not the damaged ones
    assert report["settings"]["signal_cache"]["misses"] == 1
    again = torch.load(path, weights_only=True)  # the entry was rewritten with the true signals
    assert set(again) == set(original) and all(torch.equal(again[k], original[k]) for k in original)


# -- one writer per model ---------------------------------------------------------------------
def test_a_second_process_on_the_same_model_is_refused_naming_the_holder(tmp_path, capsys):
    rd = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from core.rundir import ModelLock
        with ModelLock({str(rd)!r}, 0):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert fit(rd, "--data.model_index", "0", "--trainer.max_epochs", "1") == 2
        line = last_line(capsys)
        assert f"pid {holder.pid}" in line and "being trained" in line, line
    finally:
        holder.kill()
        holder.wait()
    # the operating system released the lock with the process: training goes ahead now
    assert fit(rd, "--data.model_index", "0", "--trainer.max_epochs", "1") == 0


# -- resume -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, keys", [
    (["--model.kind", "snn"], ["model.kind"]),
    (["--model.width", "0.5"], ["model.width"]),
    (["--model.lr", "0.1", "--model.optimizer", "sgd"], ["model.lr", "model.optimizer"]),
])
def test_a_resume_with_other_model_settings_is_refused_naming_each_key(tmp_path, capsys, flags, keys):
    rd = tmp_path / "run"
    common = ["--data.model_index", "0", "--trainer.max_epochs", "3"]
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(rd, *common, "--trainer.callbacks+=helpers.Interrupt", "--trainer.callbacks.epoch", "1")
    before = snapshot(rd)
    assert run.main(["fit", "--run_dir", str(rd), *QUIET, "--data.num_references", "2", "--model.width", "0.25",
                     "--model.kind", "ann", *common, *flags]) == 2
    line = last_line(capsys)
    assert all(k in line for k in keys) and "checkpoint has" in line, line
    assert snapshot(rd) == before


def test_a_resume_appends_to_the_training_log(tmp_path):
    rd = tmp_path / "run"
    common = ["--data.model_index", "0", "--trainer.max_epochs", "3"]
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(rd, *common, "--trainer.callbacks+=helpers.Interrupt", "--trainer.callbacks.epoch", "2")
    log = rd / "model_0" / "logs" / "metrics.csv"
    first = log.read_text()
    assert fit(rd, *common) == 0
    text = log.read_text()
    assert text.startswith(first.splitlines()[0])  # the header, then every earlier row, kept
    assert all(line in text for line in first.splitlines()[1:])
    import csv

    epochs = {row["epoch"] for row in csv.DictReader(text.splitlines())}
    assert {"0", "1", "2"} <= epochs


def test_test_and_validate_write_their_own_logs(finished, capsys):
    logs = finished / "model_0" / "logs"
    kept = {p: p.read_bytes() for p in logs.glob("*") if p.is_file()}
    for sub in ("test", "validate"):
        assert run.main([sub, "--run_dir", str(finished), *QUIET, *SMALL]) == 0
        assert (logs / sub / "metrics.csv").is_file()
    assert {p: p.read_bytes() for p in kept} == kept


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, key", [
    (["--data.model_index", "-1"], "data.model_index=-1"),
    (["--model.tau", "0.5", "--model.kind", "snn"], "model.tau=0.5"),
    (["--data.seed", "1e23"], "data.seed"),
    (["--seed_everything", "1e23"], "seed_everything"),
    (["--data.seed", "-3"], "data.seed=-3"),
    (["--references", "{bogus: 1}"], "bogus"),
    (["--model.weight_decay", "-1"], "model.weight_decay=-1"),
    (["--model.momentum", "1.5"], "model.momentum=1.5"),
    (["--trainer.callbacks.audit_subset", "49"], "audit_subset=49"),
    (["--trainer.max_epochs", "0"], "trainer.max_epochs=0"),
    (["--trainer.max_epochs", "-1"], "trainer.max_epochs=-1"),
])
def test_bad_fit_input_is_one_line_exit_2_and_writes_nothing(finished, tmp_path, capsys, flags, key):
    for rd in (tmp_path / "fresh", finished):  # a new run directory is not created, an old one not touched
        before = snapshot(rd) if rd.exists() else None
        code = None
        try:
            code = fit(rd, "--trainer.max_epochs", "2", *flags)
        except SystemExit as stop:  # a parser error (wrong type) exits 2 from jsonargparse
            code = stop.code
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len([line for line in err if line.startswith("error: ")]) == 1 and key in err[-1], err
        assert (snapshot(rd) if rd.exists() else None) == before


def test_an_empty_run_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run.main(["fit", "--run_dir", "", *QUIET]) == 2
    assert "run_dir=''" in last_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_report_dir_inside_a_model_folder_is_refused(rd, capsys):
    before = snapshot(rd)
    assert audit(rd, "--report_dir", str(rd / "model_1" / "reports")) == 2
    assert "model_<k>" in last_line(capsys)
    assert snapshot(rd) == before


def test_a_corrupt_target_checkpoint_is_refused_by_test(rd, capsys):
    path = rd / "model_0" / "checkpoints" / "last.ckpt"
    path.write_bytes(path.read_bytes()[:3000])
    before = snapshot(rd)
    assert run.main(["test", "--run_dir", str(rd), *QUIET, *SMALL]) == 2
    line = last_line(capsys)
    assert line.startswith("error: ") and str(path) in line, line
    assert snapshot(rd) == before


def test_a_malicious_ckpt_path_is_refused_in_one_line(rd, tmp_path, capsys):
    import argparse

    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {}, "state_dict": {}, "x": argparse.Namespace(cmd="rm -rf ~")}, evil)
    for sub in ("test", "fit"):
        before = snapshot(rd)
        assert run.main([sub, "--run_dir", str(rd), *QUIET, *SMALL, "--ckpt_path", str(evil)]) == 2
        line = last_line(capsys)
        assert str(evil) in line and "weights_only" in line and line.startswith("error: "), line
        assert snapshot(rd) == before


def test_the_lock_file_does_not_outlive_its_meaning(tmp_path):
    """A lock left by a killed process does not block the next one (the flock died with it)."""
    rd = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from core.rundir import ModelLock
        ModelLock({str(rd)!r}, 3).__enter__()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, 9)
    holder.wait()
    time.sleep(0.1)
    from core.rundir import ModelLock

    assert (rd / "model_3" / ".lock").is_file()
    with ModelLock(rd, 3):
        pass


def _write_report_when_told(folder: str, writer: str, ready) -> None:
    from audit.report import write_report

    ready.set()  # imports done: the next thing this process does is write the report
    write_report(folder, {}, attacks={"attack_p": {"auc": 0.5}}, settings={"writer": writer})


def test_two_audits_writing_one_report_folder_never_mix_their_files(tmp_path):
    """Each report file is atomic on its own; the set is atomic under the folder's lock: a
    second writer waits for the first to finish all of its files, then writes all of its own."""
    import multiprocessing as mp

    from core.rundir import ReportLock

    out = tmp_path / "audit"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    with ReportLock(out):  # another audit is writing this folder
        child = ctx.Process(target=_write_report_when_told, args=(str(out), "second", ready))
        child.start()
        assert ready.wait(120)
        time.sleep(1.0)  # without the lock, writing report.json and report.md takes milliseconds
        assert child.is_alive() and not (out / "report.json").exists() and not (out / "report.md").exists()
    child.join(120)
    assert child.exitcode == 0
    assert json.loads((out / "report.json").read_text())["settings"]["writer"] == "second"
    assert "writer=second" in (out / "report.md").read_text()
