"""Canaries in the membership plan (data.canaries): drawn once under the plan's hash, in the
target's training set independently with probability 1/2, never in a reference's, the audit set
or the population."""

import json

import pytest
import torch

from core.errors import ConfigError
from datamodules import MembershipDataModule, load_plan
from datamodules.canaries import check_canaries


def _dm(tmp_path, index=0, canaries=None, **kw):
    dm = MembershipDataModule(num_references=2, model_index=index, seed=5, run_dir=str(tmp_path),
                              canaries=canaries, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def _training_images(dm):
    """Every image of the model's training set (its loader's dataset), flattened."""
    ds = dm.train_dataloader().dataset
    return torch.stack([ds[i][0].flatten() for i in range(len(ds))]), torch.stack([ds[i][1] for i in range(len(ds))])


@pytest.mark.parametrize("kind", ["mislabel", "noise"])
def test_only_the_target_trains_on_its_included_canaries(tmp_path, kind):
    dm = _dm(tmp_path, canaries={"count": 60, "kind": kind})
    plan = dm.plan
    inc = dm.canary_included
    assert inc.shape == (60,) and 15 < int(inc.sum()) < 45  # independent fair coins, not a fixed half
    canary = dm.canary_set()
    images = torch.stack([canary[i][0].flatten() for i in range(60)])
    labels = torch.stack([canary[i][1] for i in range(60)])
    train_x, train_y = _training_images(dm)
    members = int(plan.membership[0].sum())
    assert len(train_x) == members + int(inc.sum())
    # the included canaries, with their canary labels, are the last items of the target's set
    assert torch.equal(train_x[members:], images[inc]) and torch.equal(train_y[members:], labels[inc])
    if kind == "mislabel":  # pool images with a wrong label, outside the audit set and the population
        idx = plan.canaries.indices
        assert torch.all(labels != dm.pool.labels[idx])
        used = set(plan.audit_indices.tolist()) | set(plan.population_indices.tolist())
        assert not used & set(idx.tolist())
        assert plan.fingerprint["audit_size"] == 1797 - 180 - 60  # digits: population 10%, then the canaries
    else:
        assert plan.canaries.indices is None and plan.canaries.images.shape == (60, 1, 8, 8)
        assert plan.fingerprint["audit_size"] == 1797 - 180
    # a reference's training set holds no canary image
    ref_x, _ = _training_images(_dm(tmp_path, index=1, canaries={"count": 60, "kind": kind}))
    assert len(ref_x) == int(plan.membership[1].sum())
    assert not any(torch.equal(r, c) for c in images[:10] for r in ref_x)


def test_canaries_are_under_the_plan_hash_and_fingerprint(tmp_path):
    dm = _dm(tmp_path, canaries={"count": 40, "kind": "noise"})
    again = load_plan(tmp_path)
    assert torch.equal(again.canaries.included, dm.canary_included)
    assert torch.equal(again.canaries.images, dm.plan.canaries.images)
    assert json.loads((tmp_path / "plan.json").read_text())["canaries"] == {"count": 40, "kind": "noise"}
    # a flipped inclusion bit is caught by the hash
    tensors = torch.load(tmp_path / "plan.pt", weights_only=True)
    tensors["canary_included"][0] ^= True
    torch.save(tensors, tmp_path / "plan.pt")
    with pytest.raises(ConfigError, match="does not match the hash"):
        load_plan(tmp_path)


@pytest.mark.parametrize("other", [None, {"count": 41, "kind": "noise"}, {"count": 40, "kind": "mislabel"}])
def test_a_plan_with_other_canaries_is_refused(tmp_path, other):
    _dm(tmp_path, canaries={"count": 40, "kind": "noise"})
    with pytest.raises(ConfigError, match="canaries: plan has"):
        _dm(tmp_path, canaries=other)


def test_a_plan_without_canaries_is_unchanged(tmp_path):
    plain = _dm(tmp_path / "a")
    assert "canaries" not in plain.plan.fingerprint and plain.canary_set() is None
    assert "canary_labels" not in torch.load(tmp_path / "a" / "plan.pt", weights_only=True)
    with pytest.raises(ConfigError, match="canaries: plan has None"):
        _dm(tmp_path / "a", canaries={"count": 40, "kind": "noise"})


@pytest.mark.parametrize("value, match", [
    (5, "expected null"), ({"count": 10}, "missing kind"), ({"kind": "noise"}, "missing count"),
    ({"count": 1, "kind": "noise"}, r"data.canaries.count=1 is not allowed"),
    ({"count": 10, "kind": "gauss"}, r"data.canaries.kind='gauss' is not allowed; choose one of: mislabel, noise"),
    ({"count": 10, "kind": "noise", "seed": 3}, "unknown key"),
    ({"count": True, "kind": "noise"}, "data.canaries.count=True"),
])
def test_bad_canaries_are_one_line_errors(value, match):
    with pytest.raises(ConfigError, match=match) as err:
        check_canaries(value)
    assert "\n" not in str(err.value)


def test_too_many_mislabel_canaries_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="at least 50 the audit set, so at most 1567 can be canaries"):
        _dm(tmp_path, canaries={"count": 1700, "kind": "mislabel"})


# -- the black-box canary audit in a fit --------------------------------------------------------
def test_fit_logs_the_canary_bound_every_epoch_and_reports_the_final_one(tmp_path):
    import csv

    import run

    rd = tmp_path / "run"
    assert run.main(["fit", "--run_dir", str(rd), "--trainer.enable_progress_bar", "false",
                     "--trainer.enable_model_summary", "false", "--data.num_references", "0",
                     "--model.kind", "ann", "--model.width", "0.5", "--trainer.max_epochs", "2",
                     "--data.canaries", "{count: 100, kind: noise}"]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    canary = report["canary_audit"]
    assert (canary["count"], canary["kind"], canary["delta"]) == (100, "noise", 0.0)
    assert 0 < canary["guesses"] <= 100 and 0 <= canary["correct"] <= canary["guesses"] and canary["eps_lb"] >= 0
    history = report["history"]
    assert [h["epoch"] for h in history] == [0, 1] and history[-1]["canary_eps_lb"] == canary["eps_lb"]
    with open(rd / "model_0" / "logs" / "metrics.csv") as f:
        logged = {int(r["epoch"]): float(r["audit/canary_eps_lb"]) for r in csv.DictReader(f)
                  if r.get("audit/canary_eps_lb")}
    assert logged == pytest.approx({h["epoch"]: h["canary_eps_lb"] for h in history})
    assert "Canary audit (black box): 100 noise canaries" in (rd / "audit" / "report.md").read_text()
    # the audit's accuracies exclude the canaries: the audit set and population hold none
    assert report["settings"]["audit_samples"] == 1797 - 180
    # run.py audit of the finished target redoes the canary audit from its checkpoint: the same numbers
    assert run.main(["audit", "--run_dir", str(rd), "--trainer.enable_progress_bar", "false",
                     "--report_dir", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())["canary_audit"]
    assert again == pytest.approx(canary)


def test_the_canary_bound_reaches_the_targets_wandb_run_per_epoch(tmp_path, monkeypatch):
    import run
    from wandb_records import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rd = tmp_path / "run"
    logger = "{class_path: lightning.pytorch.loggers.WandbLogger, init_args: {project: mia-test}}"
    assert run.main(["fit", "--run_dir", str(rd), "--trainer.enable_progress_bar", "false",
                     "--trainer.enable_model_summary", "false", "--data.num_references", "0",
                     "--model.kind", "ann", "--model.width", "0.5", "--trainer.max_epochs", "2",
                     "--data.canaries", "{count: 50, kind: mislabel}", "--trainer.logger", logger]) == 0
    files = sorted((rd / "model_0" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    record = read_run(files[0])
    assert record["metrics"].get("audit/*") == "epoch"  # on the epoch axis, like dp/epsilon
    logged = {row["epoch"]: row["audit/canary_eps_lb"] for row in record["history"] if "audit/canary_eps_lb" in row}
    history = json.loads((rd / "audit" / "report.json").read_text())["history"]
    assert logged == pytest.approx({h["epoch"]: h["canary_eps_lb"] for h in history}) and len(logged) == 2
