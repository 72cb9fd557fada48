"""The audit while training: callback, references on demand, caches, reports, W&B."""

import argparse
import csv
import json
from pathlib import Path

import pytest
import torch

import run
from audit import ATTACKS
from audit.cache import cached_signals
from core.errors import ConfigError
from datamodules import MembershipDataModule
from lightning_modules import Classifier
from training.loggers import wandb_id

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def fit(rd, *flags):
    return run.main(["fit", "--run_dir", str(rd), *QUIET, *flags])


def rows(rd, index=0):
    with open(Path(rd) / f"model_{index}" / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The default run, shrunk: K = 2 SNN references + SNN target, 2 epochs each."""
    rd = tmp_path_factory.mktemp("audit") / "run"
    assert fit(rd, "--data.num_references", "2", "--trainer.max_epochs", "2", "--model.width", "0.5") == 0
    return rd


def test_default_run_logs_every_attack_every_epoch_and_writes_the_report(small_run):
    rd = small_run
    for k in (0, 1, 2):
        assert (rd / f"model_{k}" / "done.json").is_file()
    epochs = {}
    for r in rows(rd):
        if r.get("attack/rmia_offline/auc"):
            epochs[int(r["epoch"])] = r
    assert sorted(epochs) == [0, 1]
    for r in epochs.values():
        for name in ATTACKS:
            for m in ("auc", "tpr@1%fpr", "tpr@0%fpr"):
                v = float(r[f"attack/{name}/{m}"])
                assert 0.0 <= v <= 1.0
            # ~808 non-members cannot measure TPR at 0.1% FPR: no number is logged for it
            assert f"attack/{name}/tpr@0.1%fpr" not in r
        assert float(r["audit/train_acc"]) - float(r["audit/test_acc"]) == pytest.approx(float(r["audit/acc_gap"]), abs=1e-6)
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert set(report["attacks"]) == set(ATTACKS)
    n_out = 1617 - 808  # the target's non-members among the digits audit set
    assert report["below_resolution"] == {"tpr@0.1%fpr": f"N_out = {n_out} < 1,000",
                                          "tpr@0.01%fpr": f"N_out = {n_out} < 10,000"}
    assert all(m["tpr@0.1%fpr"] is None and m["tpr@1%fpr"] is not None for m in report["attacks"].values())
    assert f"n/a (N_out = {n_out} < 1,000)" in (rd / "audit" / "report.md").read_text()
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert {"train_acc", "test_acc"} <= set(report["history"][-1])
    assert report["attacks"]["rmia_offline"]["auc"] == pytest.approx(float(epochs[1]["attack/rmia_offline/auc"]), abs=1e-6)
    for name in ATTACKS:
        c = report["curves"][name]
        assert c["fpr"][0] == 0.0 and c["fpr"][-1] == 1.0 and len(c["fpr"]) <= 1100
    md = (rd / "audit" / "report.md").read_text()
    assert "| rmia_offline |" in md and "train" in md
    assert (rd / "audit" / "roc.png").stat().st_size > 10_000


def test_rerun_skips_finished_models_and_audit_reuses_the_cache(small_run, capsys):
    rd = small_run
    stamp = {k: (rd / f"model_{k}" / "checkpoints" / "last.ckpt").stat().st_mtime_ns for k in (0, 1, 2)}
    assert fit(rd, "--data.num_references", "2", "--trainer.max_epochs", "2", "--model.width", "0.5") == 0
    assert "finished earlier" in capsys.readouterr().err
    assert stamp == {k: (rd / f"model_{k}" / "checkpoints" / "last.ckpt").stat().st_mtime_ns for k in (0, 1, 2)}

    args = ["audit", "--run_dir", str(rd), "--data.num_references", "2", "--model.width", "0.5", *QUIET]
    assert run.main(args) == 0  # the references' signals were cached by the callback during fit
    first = json.loads((rd / "audit" / "report.json").read_text())["settings"]["signal_cache"]
    assert first == {"hits": 3}  # the references, and the target: fit cached its final signals too
    assert run.main(args) == 0
    again = json.loads((rd / "audit" / "report.json").read_text())["settings"]["signal_cache"]
    assert again == {"hits": 3}

    # a reference checkpoint changed after it finished is refused in one line, never audited
    path = rd / "model_1" / "checkpoints" / "last.ckpt"
    original = path.read_bytes()
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] * 0.5
    torch.save(ckpt, path)
    report = (rd / "audit" / "report.json").read_bytes()
    assert run.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(path) in err and "changed" in err, err
    assert (rd / "audit" / "report.json").read_bytes() == report
    path.write_bytes(original)
    assert run.main(args) == 0


def test_audit_reads_the_plan_settings_from_the_run_directory(small_run, capsys):
    rd = small_run  # made with --data.num_references 2 (the default config says 4)
    assert run.main(["audit", "--run_dir", str(rd), *QUIET]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert report["settings"]["plan"]["num_references"] == 2 and report["settings"]["references"] == [1, 2]
    plan = json.loads((rd / "plan.json").read_text())
    repeated = ["--data.num_references", "2", "--data.dataset", "digits", "--data.seed", "0", "--data.population",
                "null", "--data.audit_size", str(plan["audit_size"])]
    assert run.main(["audit", "--run_dir", str(rd), *QUIET, *repeated]) == 0  # repeating them is fine
    before = sorted((p, p.stat().st_mtime_ns) for p in rd.rglob("*"))
    capsys.readouterr()
    for flag, value, saved in (("--data.num_references", "4", "2"), ("--data.seed", "1", "0"),
                               ("--data.dataset", "mnist", "digits"), ("--data.population", "0.2", "null"),
                               ("--data.audit_size", "100", str(plan["audit_size"]))):
        assert run.main(["audit", "--run_dir", str(rd), *QUIET, flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {flag} ") and f"records {saved}" in err[0], err
        assert value in err[0].split("contradicts")[0]
    assert sorted((p, p.stat().st_mtime_ns) for p in rd.rglob("*")) == before  # nothing written


def test_audit_grid_of_queries_and_latencies(small_run):
    rd = small_run
    args = ["audit", "--run_dir", str(rd), "--data.num_references", "2", "--model.width", "0.5", *QUIET,
            "--queries", "[plain, 'dropout:p=0.05,n=2']", "--latencies", "[1, 2]", "--attacks", "[attack_p, rmia_offline]"]
    assert run.main(args) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert set(report["attacks"]) == {
        "attack_p@T1", "rmia_offline@T1", "attack_p@dropout_p0.05_n2,T1", "rmia_offline@dropout_p0.05_n2,T1",
        "attack_p@T2", "rmia_offline@T2", "attack_p@dropout_p0.05_n2,T2", "rmia_offline@dropout_p0.05_n2,T2",
    }
    distinct = report["target"]["distinct_confidences"]
    assert set(distinct) == {"T1", "dropout_p0.05_n2,T1", "T2", "dropout_p0.05_n2,T2"}
    assert all(0 < v <= 1 for v in distinct.values())
    assert "Distinct target confidences" in (rd / "audit" / "report.md").read_text()


def _train_three(rd, *target_flags, ref_flags=("--model.kind", "ann", "--trainer.max_epochs", "40")):
    common = ["--data.num_references", "2", "--data.audit_size", "300", "--data.batch_size", "32", "--model.lr", "0.01"]
    for k in (1, 2):
        assert fit(rd, *common, "--data.model_index", str(k), *ref_flags) == 0
    assert fit(rd, *common, "--data.model_index", "0", "--model.kind", "ann", *target_flags) == 0
    return json.loads((rd / "audit" / "report.json").read_text())


@pytest.mark.slow
def test_overfitted_target_leaks_and_untrained_target_does_not(tmp_path):
    leaky = _train_three(tmp_path / "leaky", "--trainer.max_epochs", "40")
    assert leaky["target"]["train_acc"] > leaky["target"]["test_acc"]
    assert leaky["attacks"]["rmia_offline"]["auc"] > 0.6
    untrained = _train_three(tmp_path / "untrained", "--trainer.max_epochs", "1", "--model.lr", "1e-12")
    assert abs(untrained["attacks"]["rmia_offline"]["auc"] - 0.5) < 0.1


def test_no_references_runs_reference_free_attacks_and_says_why_once(tmp_path, capsys):
    rd = tmp_path / "run"
    assert fit(rd, "--data.num_references", "0", "--trainer.max_epochs", "2", "--model.kind", "ann") == 0
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if "skipped" in line or "reference models" in line]
    assert len(said) == 1, err  # one line for the six attacks and two epochs, not a warning each
    assert said[0].startswith("MembershipAttack: ") and "data.num_references 0" in said[0], said
    assert "none has finished training" not in said[0] and "not trained yet" not in said[0], said  # K = 0 was asked
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert set(report["attacks"]) == {"attack_p"}
    assert "needs reference models" in report["skipped"]["rmia_offline"]


def test_a_target_trained_before_its_references_says_once_which_are_missing_and_what_trains_them(tmp_path, capsys):
    rd = tmp_path / "run"
    flags = ["--data.num_references", "2", "--trainer.max_epochs", "2", "--model.kind", "ann", "--model.width", "0.25"]
    assert fit(rd, *flags, "--data.model_index", "0") == 0
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if "skipped" in line or "reference models" in line or "not trained" in line]
    assert len(said) == 1, err
    line = said[0]
    assert "references not trained yet: model_1, model_2." in line, line
    assert "rerun this fit with --data.model_index null" in line and f"python run.py audit --run_dir {rd}" in line
    for name in ("attack_r", "rmia_offline", "rmia_online", "lira_online", "lira_offline", "reference_ratio"):
        assert name in line, line
    assert run.main(["audit", "--run_dir", str(rd), *QUIET]) == 0  # the offline audit: one line too
    said = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line or "not trained" in line]
    assert len(said) == 1 and said[0].startswith("audit: references not trained yet: model_1, model_2."), said
    assert fit(rd, *flags, "--data.model_index", "null") == 0  # what the line says trains them
    assert not [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert run.main(["audit", "--run_dir", str(rd), *QUIET]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert set(report["attacks"]) == set(ATTACKS) and not report["skipped"]


def test_interrupted_run_resumes_and_finishes_with_every_epoch(tmp_path):
    rd = tmp_path / "run"
    flags = ["--data.num_references", "0", "--trainer.max_epochs", "3", "--model.kind", "ann"]
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(rd, *flags, "--trainer.callbacks+=helpers.Interrupt", "--trainer.callbacks.epoch", "1")
    assert (rd / "model_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (rd / "model_0" / "done.json").exists()
    assert fit(rd, *flags) == 0
    assert json.loads((rd / "model_0" / "done.json").read_text())["epochs"] == 3
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [0, 1, 2]


def test_wandb_offline_writes_a_run_with_a_stable_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rd = tmp_path / "run"
    logger = "{class_path: lightning.pytorch.loggers.WandbLogger, init_args: {project: mia-test}}"
    assert fit(rd, "--data.num_references", "0", "--trainer.max_epochs", "1", "--model.kind", "ann",
               "--trainer.logger", logger) == 0
    runs = list((rd / "model_0" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and wandb_id(rd, 0) in runs[0].name
    assert wandb_id(rd, 0) == wandb_id(str(rd), 0) != wandb_id(rd, 1)


def _done_run(tmp_path):
    rd = tmp_path / "run"
    assert fit(rd, "--data.num_references", "2", "--data.model_index", "1", "--trainer.max_epochs", "1",
               "--model.kind", "ann") == 0
    dm = MembershipDataModule(num_references=2, run_dir=str(rd))
    dm.setup()
    return rd, dm, rd / "model_1" / "checkpoints" / "last.ckpt"


def test_missing_corrupt_or_foreign_reference_checkpoints_are_refused(tmp_path):
    rd, dm, path = _done_run(tmp_path)
    original = path.read_bytes()
    path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=str(path)):
        cached_signals(rd, 1, dm, "plain")
    # a pickle that would run code is not loaded (weights_only=True), even without a recorded hash
    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {}, "state_dict": {}, "evil": argparse.Namespace(cmd="rm -rf ~")}, evil)
    with pytest.raises(ConfigError, match="weights_only"):
        Classifier.from_checkpoint(evil)
    path.unlink()
    with pytest.raises(ConfigError, match="missing"):
        cached_signals(rd, 1, dm, "plain")
    path.write_bytes(original)
    other = MembershipDataModule(num_references=2, seed=5, run_dir=None)
    other.setup()
    with pytest.raises(ConfigError, match="trained on plan"):
        Classifier.from_checkpoint(path, other.plan.fingerprint, 1)
    with pytest.raises(ConfigError, match="as model 1"):
        Classifier.from_checkpoint(path, dm.plan.fingerprint, 2)


@pytest.mark.parametrize("flag, value, key", [
    ("--trainer.callbacks.queries", "[bogus]", "queries"),
    ("--trainer.callbacks.attacks", "[lira]", "attacks"),
    ("--trainer.callbacks.rmia_offline_a", "1.5", "rmia_offline_a"),
    ("--trainer.callbacks.every_n_epochs", "0", "every_n_epochs"),
])
def test_bad_callback_values(tmp_path, capsys, flag, value, key):
    assert fit(tmp_path / "r", flag, value) == 2
    assert key in capsys.readouterr().err.strip().splitlines()[-1]


def test_audit_latencies_on_an_ann_are_refused(tmp_path, capsys):
    rd = tmp_path / "run"
    assert fit(rd, "--data.num_references", "0", "--trainer.max_epochs", "1", "--model.kind", "ann") == 0
    assert run.main(["audit", "--run_dir", str(rd), "--data.num_references", "0", "--model.kind", "ann",
                     "--latencies", "[2]", *QUIET]) == 2
    assert "ANN" in capsys.readouterr().err


def test_corrupt_last_checkpoint_stops_the_resume_with_one_line(tmp_path, capsys):
    rd = tmp_path / "run"
    flags = ["--data.num_references", "0", "--trainer.max_epochs", "2", "--model.kind", "ann"]
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(rd, *flags, "--trainer.callbacks+=helpers.Interrupt", "--trainer.callbacks.epoch", "1")
    last = rd / "model_0" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a write cut short
    assert fit(rd, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(last) in err and "delete it" in err


def test_which_attacks_run_with_which_references():
    from audit.scoring import runnable

    ok, skipped = runnable(list(ATTACKS), None)
    assert ok == ["attack_p"] and len(skipped) == 6
    one = torch.tensor([[True, False, True]])  # one finished reference: nobody has both IN and OUT,
    ok, skipped = runnable(list(ATTACKS), one, [1])  # and two samples have no OUT reference at all
    assert ok == ["attack_p", "reference_ratio"]
    assert "2 samples have none" in skipped["rmia_offline"] and "IN and an OUT" in skipped["lira_online"]
    out_only = torch.tensor([[False, False, False]])  # every sample OUT: the offline attacks can run
    ok, skipped = runnable(list(ATTACKS), out_only, [1])
    assert {"attack_r", "rmia_offline", "lira_offline"} <= set(ok) and set(skipped) == {"rmia_online", "lira_online"}
    pair = torch.stack([one[0], ~one[0]])
    ok, skipped = runnable(list(ATTACKS), pair, [1, 2])
    assert ok == list(ATTACKS) and not skipped


def test_roc_plot_shows_the_trained_latency_only():
    from audit.report import ROC_CURVES_MAX, roc_selection

    names = [f"{a}{s}" for s in ("", "@T1", "@dropout_p0.01_n4", "@dropout_p0.01_n4,T1") for a in ATTACKS]
    picked = roc_selection({n: {} for n in names})
    assert list(picked) == [n for n in names if not n.endswith("T1")]
    assert len(roc_selection({f"a{i}@q{i}": {} for i in range(40)})) == ROC_CURVES_MAX


def test_audit_report_dir_keeps_the_runs_own_report(small_run, capsys):
    rd = small_run
    own = (rd / "audit" / "report.json").read_bytes()
    out = rd.parent / "latency_report"
    args = ["audit", "--run_dir", str(rd), "--data.num_references", "2", "--model.width", "0.5", *QUIET,
            "--latencies", "[1, 2]", "--attacks", "[attack_p, rmia_offline]", "--report_dir", str(out)]
    assert run.main(args) == 0
    assert (rd / "audit" / "report.json").read_bytes() == own
    report = json.loads((out / "report.json").read_text())
    assert {"rmia_offline@T1", "rmia_offline@T2"} <= set(report["attacks"]) and (out / "latency.png").is_file()
    assert str(out / "report.md") in capsys.readouterr().err

    (rd.parent / "a_file").write_text("x")
    for bad, why in ((rd.parent / "a_file", "is a file"), (rd, "mix the report")):
        assert run.main(args[:-1] + [str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "report_dir" in err and why in err, err
    assert (rd.parent / "a_file").read_text() == "x"


@pytest.fixture(scope="module")
def ann_run(tmp_path_factory):
    """A finished ANN target without references, 1 epoch: enough to be audited."""
    rd = tmp_path_factory.mktemp("ann") / "run"
    assert fit(rd, "--data.num_references", "0", "--trainer.max_epochs", "1", "--model.kind", "ann",
               "--model.width", "0.25") == 0
    return rd


@pytest.mark.parametrize("flag, value, key", [
    ("--rmia_offline_a", "2", "rmia_offline_a=2"),
    ("--rmia_gamma", "-1", "rmia_gamma=-1"),
    ("--audit_subset", "1", "audit_subset=1"),
    ("--audit_subset", "0", "audit_subset=0"),
    ("--audit_subset", "-5", "audit_subset=-5"),
    ("--audit_subset", "49", "audit_subset=49 is not allowed; expected an integer in [50, inf] or null"),
    ("--queries", "[]", "queries=[]"),
    ("--queries", "[plain, plain]", "queries=['plain', 'plain']"),
    ("--latencies", "[0]", "latencies=[0]"),
    ("--attacks", "[nope]", "attacks=['nope']"),
    ("--attacks", "[]", "attacks=[]"),
    ("--query_seed", "-1", "query_seed=-1"),
    ("--report_dir", "", "report_dir=''"),
])
def test_audit_refuses_each_bad_setting_in_one_line_before_any_query(ann_run, capsys, monkeypatch, flag, value, key):
    import audit.signals

    def no_query(*args, **kwargs):
        raise AssertionError("a model was queried before the settings were checked")

    monkeypatch.setattr(audit.signals, "query_split", no_query)
    before = sorted(p.relative_to(ann_run) for p in ann_run.rglob("*"))
    args = ["audit", "--run_dir", str(ann_run), "--data.num_references", "0", "--model.kind", "ann",
            "--model.width", "0.25", *QUIET, flag, value]
    assert run.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and key in err[-1] and "allowed" in err[-1], err[-1]
    assert sorted(p.relative_to(ann_run) for p in ann_run.rglob("*")) == before


def test_audit_subset_needs_twenty_members_and_twenty_non_members_of_the_target(ann_run, capsys, tmp_path):
    """At the minimum size (50), the subset's draw decides: a seed whose 50 samples hold fewer than
    20 members (or non-members) of the target is one line and exit 2 before any query; a seed
    whose draw holds 20 of each audits."""
    from datamodules.plan import load_plan

    plan = load_plan(ann_run)
    dm = MembershipDataModule(num_references=0)
    members = {s: int(plan.membership[0][dm.subset_positions(50, s, plan)].sum()) for s in range(200)}
    bad = next(s for s, m in members.items() if min(m, 50 - m) < 20)
    good = next(s for s, m in members.items() if min(m, 50 - m) >= 20)
    before = sorted(p.relative_to(ann_run) for p in ann_run.rglob("*"))
    args = ["audit", "--run_dir", str(ann_run), "--data.num_references", "0", "--model.kind", "ann",
            "--model.width", "0.25", *QUIET, "--audit_subset", "50", "--attacks", "[attack_p]"]
    assert run.main([*args, "--subset_seed", str(bad), "--report_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: audit_subset=50 draws ") and \
        f"{members[bad]} member(s) and {50 - members[bad]} non-member(s) of model 0 (subset_seed={bad}); expected " \
        "20 of each at least" in err[0] and "docs/limits.md" in err[0], err
    assert sorted(p.relative_to(ann_run) for p in ann_run.rglob("*")) == before and not (tmp_path / "bad").exists()
    assert run.main([*args, "--subset_seed", str(good), "--report_dir", str(tmp_path / "good")]) == 0
    report = json.loads((tmp_path / "good" / "report.json").read_text())
    assert report["settings"]["audit_samples"] == 50


def test_fit_checks_the_subset_of_every_model_its_rotation_audits_before_training():
    """The rotation at the end of fit audits every model on the same subset: each needs 20
    members and 20 non-members in it; without the rotation only the target does."""
    from callbacks import MembershipAttack

    dm = MembershipDataModule(num_references=2)  # no run_dir: the plan is drawn in memory
    plan = dm.planned()

    def counts(seed):
        pos = dm.subset_positions(50, seed, plan)
        return [int(plan.membership[m][pos].sum()) for m in range(3)]

    seed = next(s for s in range(500) if 20 <= counts(s)[0] <= 30 and not all(20 <= c <= 30 for c in counts(s)))
    MembershipAttack(rotate=False, audit_subset=50, subset_seed=seed).check_data(dm)
    with pytest.raises(ConfigError, match=rf"MembershipAttack audit_subset=50 draws \d+ member\(s\) and \d+ "
                                          rf"non-member\(s\) of model [12] \(subset_seed={seed}\); expected 20 of each"):
        MembershipAttack(rotate=True, audit_subset=50, subset_seed=seed).check_data(dm)


def test_the_table_is_printed_by_whoever_runs_the_audit_not_by_a_global_switch(small_run, capsys, tmp_path):
    from training.cli import run_cli

    args = ["audit", "--run_dir", str(small_run), *QUIET, "--report_dir", str(tmp_path / "r")]
    assert run_cli(args, print_tables=False) == 0
    quiet = capsys.readouterr().err
    assert "report:" not in quiet and "AUC [95% CI]" not in quiet
    assert (tmp_path / "r" / "report.md").is_file()  # written all the same
    assert run_cli(args) == 0
    loud = capsys.readouterr().err
    assert "AUC [95% CI]" in loud and f"report: {tmp_path / 'r' / 'report.md'}" in loud
