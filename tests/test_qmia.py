"""QMIA: the score and loss on seeded synthetic data, and the registered attack on a run."""

import json

import pytest
import torch

import run
from attacks import roc_metrics
from attacks.qmia import gaussian_head, gaussian_nll, qmia

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _fit_regressor(x, y, steps=400):
    """A linear regression head (mean, log std) fitted with QMIA's loss."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        gaussian_nll(head(x), y).backward()
        opt.step()
    return head


@pytest.mark.parametrize("shift, low, high", [(1.5, 0.8, 1.0), (0.0, 0.45, 0.55)])
def test_a_known_shift_for_members_is_detected_and_none_is_not(shift, low, high):
    g = torch.Generator().manual_seed(1)
    d, z, n = 4, 4000, 4000
    w = torch.randn(d, generator=g)

    def draw(m):  # the target's score: mean and spread depend on the sample
        x = torch.randn(m, d, generator=g)
        return x, 3 * (x @ w) + torch.exp(0.5 * x[:, 0]) * torch.randn(m, generator=g)

    x_pop, y_pop = draw(z)  # population: non-members only
    head = _fit_regressor(x_pop, y_pop)
    x_aud, y_aud = draw(n)
    member = torch.arange(n) % 2 == 0
    spread = torch.exp(0.5 * x_aud[:, 0])
    y_aud = y_aud + shift * spread * member  # members' scores move up by `shift` of their spread
    with torch.no_grad():
        mean, std = gaussian_head(head(x_aud))
    auc = roc_metrics(qmia(y_aud, mean, std), member)["auc"]
    assert low <= auc <= high, auc
    # the regression matters: standardising beats the raw score when spreads differ
    if shift:
        assert auc > roc_metrics(y_aud.double(), member)["auc"] + 0.1


def test_qmia_checks_its_inputs():
    with pytest.raises(ValueError, match="std"):
        qmia(torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="output"):
        gaussian_head(torch.zeros(3, 3))


def test_registered_qmia_trains_on_the_population_only_and_is_cached(tmp_path):
    rd = tmp_path / "run"
    common = ["--run_dir", str(rd), "--data.num_references", "0", "--model.kind", "ann", "--model.width", "0.25", *QUIET]
    assert run.main(["fit", *common, "--trainer.max_epochs", "2"]) == 0
    assert run.main(["audit", *common, "--attacks", "[attack_p, qmia]", "--qmia_steps", "20"]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert list(report["attacks"]) == ["attack_p", "qmia"] and report["attacks"]["qmia"]["access"] == "confidence"
    d = report["attack_details"]["qmia"]["plain"]
    z = report["settings"]["population_samples"]
    assert d["train_samples"] + d["val_samples"] == z and d["audit_samples_seen"] == 0
    assert d["steps"] == 20 and d["budget_steps"] == 2 * -(-report["settings"]["audit_samples"] // 2 // 64)
    assert report["settings"]["qmia_steps"] == 20
    assert run.main(["audit", *common, "--attacks", "[qmia]", "--qmia_steps", "20"]) == 0
    again = json.loads((rd / "audit" / "report.json").read_text())
    assert again["attack_details"]["qmia"]["plain"]["cached"] is True
    assert again["attacks"]["qmia"]["auc"] == report["attacks"]["qmia"]["auc"]
    assert run.main(["audit", *common, "--attacks", "[qmia]", "--qmia_val_fraction", "0.9"]) == 2
