"""The study's attack comparisons: paired differences between attacks with verdicts, and costs."""

import random

import pytest

from study.comparisons import attack_comparisons, markdown, summary


def _entry(gap, seeds=3, targets=5, noise=0.004, seed=0):
    """Targets whose 'new' attack beats 'base' by `gap` in every metric, on top of each model's
    own vulnerability (shared by both attacks: the pairing removes it)."""
    rnd = random.Random(seed)
    runs = {}
    for s in range(seeds):
        tv = {}
        for m in range(targets):
            own = rnd.gauss(0, 0.03)
            tv[str(m)] = {"attacks": {
                "base": {"auc": 0.6 + own, "tpr@1%fpr": 0.05 + own / 3, "tpr@0.1%fpr": 0.01},
                "new": {"auc": 0.6 + own + gap + rnd.gauss(0, noise), "tpr@1%fpr": 0.05 + own / 3 + gap / 2,
                        "tpr@0.1%fpr": 0.01 + rnd.gauss(0, noise)}}}
        runs[str(s)] = {"targets": tv,
                        "attack_costs": {"base": {"models_trained": 4, "inference_passes": 5},
                                         "new": {"models_trained": 1, "inference_passes": 2}},
                        "attack_details": {"new": {"plain": {"seconds": 12.5}}}}
    return {"target": {"kind": "snn", "T": 4}, "seeds": runs}


def test_a_stronger_attack_is_named_and_a_tie_is_not_resolved():
    study = {"name": "t", "entries": {"better": _entry(0.03), "same": _entry(0.0, seed=1),
                                      "worse": _entry(-0.03, seed=2)}}
    out = {(d["entry"], d["metric"]): d for d in attack_comparisons(study, [["new", "base"]])}
    assert out["better", "auc"]["reading"] == "new stronger" and out["better", "auc"]["verdict"] == "holds"
    assert out["better", "auc"]["mean"] == pytest.approx(0.03, abs=0.005)
    assert out["better", "auc"]["n_seeds"] == 3 and out["better", "auc"]["n_values"] == 15
    assert out["worse", "auc"]["reading"] == "base stronger" and out["worse", "auc"]["verdict"] == "reversed"
    assert out["same", "auc"]["reading"] == "not resolved at 95%"
    assert out["better", "tpr@1%fpr"]["reading"] == "new stronger"
    # the pairing removes each model's own vulnerability: unpaired, the spread (0.03) would hide 0.03
    assert out["better", "auc"]["ci"][1] - out["better", "auc"]["ci"][0] < 0.02


def test_section_shows_differences_costs_and_names_an_attack_no_audit_ran():
    study = {"name": "t", "entries": {"snn_T4": _entry(0.03)}}
    study["attack_comparisons"] = summary(study, [["new", "base"], ["new", "absent"]])
    comp = study["attack_comparisons"]
    assert comp["missing"] == ["absent"]
    assert comp["costs"]["snn_T4"]["new"] == {"models_trained": 1, "inference_passes": 2, "aux_seconds": 12.5}
    assert comp["costs"]["snn_T4"]["base"] == {"models_trained": 4, "inference_passes": 5}
    text = "\n".join(markdown(study))
    assert "| snn_T4 | new - base |" in text and "(new stronger)" in text
    assert "No entry has values for absent" in text
    assert "| snn_T4 | 1 | 2 | 4 | 5 | 12 |" in text  # new models, passes; base models, passes; new seconds
    assert summary(study, []) is None and markdown({"attack_comparisons": None}) == []
