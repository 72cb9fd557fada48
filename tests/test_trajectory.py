"""The trajectory attack: the math on synthetic trajectories, and recording on a run."""

import json

import pytest
import torch

import run
from attacks import roc_metrics
from attacks.trajectory import trajectory_lira

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _trajectories(g, k, e, n, member_rows, gap):
    """Rescaled logits rising over e epochs; a member's rise is steeper by `gap` per epoch.
    Epochs share a per-sample-and-model offset (a strong correlation across epochs)."""
    t = torch.arange(e, dtype=torch.float64)[:, None]
    base = torch.randn(n, generator=g, dtype=torch.float64)   # per-sample difficulty, shared by models
    out = []
    for row in member_rows:                                  # [n] bool per model
        offset = torch.randn(1, n, generator=g, dtype=torch.float64)
        noise = 0.3 * torch.randn(e, n, generator=g, dtype=torch.float64)
        out.append(base + t * (0.5 + gap * row.double()) + offset + noise)
    return torch.stack(out)                                   # [models, e, n]


@pytest.mark.parametrize("gap, low, high", [(0.3, 0.85, 1.0), (0.0, 0.4, 0.6)])
def test_trajectories_that_separate_members_are_detected(gap, low, high):
    g = torch.Generator().manual_seed(0)
    k, e, n = 8, 6, 2000
    rows = [torch.rand(n, generator=g) < 0.5 for _ in range(k // 2)]
    ref_in = torch.stack([r for row in rows for r in (row, ~row)])
    member = torch.rand(n, generator=g) < 0.5
    both = _trajectories(g, k + 1, e, n, [member, *ref_in], gap)
    scores = trajectory_lira(both[0], both[1:], ref_in)
    auc = roc_metrics(scores, member)["auc"]
    assert low <= auc <= high, auc
    if gap:  # the whole trajectory says more than its last epoch alone
        last = roc_metrics(trajectory_lira(both[0, -1:], both[1:, -1:], ref_in), member)["auc"]
        assert auc > last


def test_trajectory_needs_in_and_out_references():
    with pytest.raises(ValueError, match="IN reference"):
        trajectory_lira(torch.zeros(2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.bool))


def test_fit_records_every_models_trajectory_and_scores_it(tmp_path):
    rd = tmp_path / "run"
    common = ["--run_dir", str(rd), "--data.num_references", "2", "--model.width", "0.5", *QUIET]
    assert run.main(["fit", *common, "--trainer.max_epochs", "2",
                     "--trainer.callbacks.attacks", "[rmia_offline, qmia, trajectory]"]) == 0
    for k in (0, 1, 2):
        folder = rd / f"model_{k}" / "trajectory"
        assert sorted(p.name for p in folder.glob("epoch_*.pt")) == ["epoch_0.pt", "epoch_1.pt"], k
        assert (folder / "index.json").is_file()
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert list(report["attacks"]) == ["rmia_offline", "qmia", "trajectory"]
    assert "trajectory" not in report["history"][0]["attacks"] and "trajectory" in report["history"][1]["attacks"]
    assert "qmia" in report["attack_details"] and not report["skipped"]
    # a finished run: read back, never recomputed
    stamp = (rd / "model_1" / "trajectory" / "epoch_0.pt").stat().st_mtime_ns
    assert run.main(["audit", *common, "--attacks", "[trajectory]", "--report_dir", str(tmp_path / "a")]) == 0
    again = json.loads((tmp_path / "a" / "report.json").read_text())
    assert again["attacks"]["trajectory"]["auc"] == report["attacks"]["trajectory"]["auc"]
    assert (rd / "model_1" / "trajectory" / "epoch_0.pt").stat().st_mtime_ns == stamp


def test_one_epoch_is_skipped_with_its_reason(tmp_path):
    rd = tmp_path / "run"
    assert run.main(["fit", "--run_dir", str(rd), "--data.num_references", "2", "--model.kind", "ann",
                     "--model.width", "0.25", *QUIET, "--trainer.max_epochs", "1",
                     "--trainer.callbacks.attacks", "[attack_p, trajectory]"]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert list(report["attacks"]) == ["attack_p"] and ">= 2 audited epochs" in report["skipped"]["trajectory"]


def test_references_trained_one_by_one_record_their_trajectories(tmp_path):
    """data.model_index k (how a cluster spreads the work): the callback on a reference records it."""
    rd = tmp_path / "run"
    common = ["--run_dir", str(rd), "--data.num_references", "2", "--model.kind", "ann", "--model.width", "0.25",
              *QUIET, "--trainer.max_epochs", "2", "--trainer.callbacks.attacks", "[trajectory]"]
    for k in (1, 2, 0):
        assert run.main(["fit", *common, "--data.model_index", str(k)]) == 0
    for k in (1, 2):
        assert (rd / f"model_{k}" / "trajectory" / "index.json").is_file()
        assert len(list((rd / f"model_{k}" / "trajectory").glob("epoch_*.pt"))) == 2
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert list(report["attacks"]) == ["trajectory"] and not report["skipped"]


def test_every_rotated_target_gets_qmia_and_its_trajectory(tmp_path):
    """`run.py audit --targets all` (what a study runs): each target prepares its own QMIA model
    and reads its own trajectory, as the main target does; the fit's rotation (before model 0's
    done.json exists) says per target why they have no row."""
    rd = tmp_path / "run"
    common = ["--run_dir", str(rd), "--data.num_references", "4", "--model.kind", "ann", "--model.width", "0.25",
              *QUIET]
    assert run.main(["fit", *common, "--trainer.max_epochs", "2",
                     "--trainer.callbacks.attacks", "[rmia_offline, qmia, trajectory]"]) == 0
    fitted = json.loads((rd / "audit" / "report.json").read_text())
    for m in ("0", "1", "2", "3", "4"):
        assert set(fitted["targets"][m]["skipped"]) == {"qmia", "trajectory"}, fitted["targets"][m]
    assert list(fitted["attacks"]) == ["rmia_offline", "qmia", "trajectory"]
    assert run.main(["audit", *common, "--attacks", "[rmia_offline, qmia, trajectory]", "--qmia_steps", "5",
                     "--targets", "all"]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert not report["skipped"]
    for m in ("0", "1", "2", "3", "4"):
        target = report["targets"][m]
        assert list(target["attacks"]) == ["rmia_offline", "qmia", "trajectory"], (m, target)
        assert "skipped" not in target and target["attack_details"]["qmia"]["plain"]["steps"] == 5
        assert (rd / f"model_{m}" / "qmia" / "plain.json").is_file()
    for name in ("qmia", "trajectory"):  # model 0 in the rotation has the main target's references
        assert report["targets"]["0"]["attacks"][name]["auc"] == report["attacks"][name]["auc"]
    assert report["across_targets"]["trajectory"]["auc"]["n"] == 5
    # The cost of each attack, counted: model 0 has the 4 other models as references, a rotated
    # target 3 (its complement left out); 2 audited epochs of trajectory per model; one query.
    assert report["attack_costs"] == {
        "rmia_offline": {"models_trained": 4, "inference_passes": 5},
        "qmia": {"models_trained": 1, "inference_passes": 2},
        "trajectory": {"models_trained": 4, "inference_passes": 10}}
    assert report["targets"]["3"]["attack_costs"] == {
        "rmia_offline": {"models_trained": 3, "inference_passes": 4},
        "qmia": {"models_trained": 1, "inference_passes": 2},
        "trajectory": {"models_trained": 3, "inference_passes": 8}}


def test_attack_costs_count_the_queries_of_each_row_and_the_recorded_epochs():
    """Audit.costs per report row: a dropout row with 10 queries costs 10 passes per model; a row
    at another latency counts like its query setting; the trajectory counts its epochs whatever
    the query setting; an attack without references reads the target alone."""
    from types import SimpleNamespace

    from attacks.queries import parse_query
    from audit.attacks import REGISTRY
    from audit.engine import Audit

    strategies = [parse_query("plain"), parse_query("dropout:p=0.01,n=10")]
    audit = SimpleNamespace(runnable=[REGISTRY[n]() for n in ("rmia_offline", "attack_p", "trajectory")],
                            settings=SimpleNamespace(strategies=strategies), refs=[1, 2, 3],
                            extra={"trajectory": {"epochs": [0, 1, 2]}})
    rows = ["rmia_offline", "rmia_offline@dropout_p0.01_n10", "rmia_offline@dropout_p0.01_n10,T2",
            "attack_p@T4", "trajectory", "trajectory@dropout_p0.01_n10", "unknown_row"]
    costs = Audit.costs(audit, dict.fromkeys(rows))
    assert costs == {"rmia_offline": {"models_trained": 3, "inference_passes": 4},
                     "rmia_offline@dropout_p0.01_n10": {"models_trained": 3, "inference_passes": 40},
                     "rmia_offline@dropout_p0.01_n10,T2": {"models_trained": 3, "inference_passes": 40},
                     "attack_p@T4": {"models_trained": 0, "inference_passes": 1},
                     "trajectory": {"models_trained": 3, "inference_passes": 12},
                     "trajectory@dropout_p0.01_n10": {"models_trained": 3, "inference_passes": 12}}
