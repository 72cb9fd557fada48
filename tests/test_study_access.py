"""The study's access-level section: per-level best, paired differences, verdicts, figure."""

import random

import pytest

from study.access import access_figure, access_summary, best_by_level, entry_levels, markdown


def _row(auc, access=None, tpr=0.02):
    row = {"auc": auc, "tpr@1%fpr": tpr, "tpr@0.1%fpr": tpr / 4}
    if access:
        row["access"] = access
    return row


def _entry(gap_spikes, gap_steps, seeds=3, targets=5, kind="snn", T=4, noise=0.005):
    rnd = random.Random(hash((gap_spikes, gap_steps, kind)) & 0xFFFF)
    runs = {}
    for seed in range(seeds):
        tv = {}
        for m in range(targets):
            base = 0.55 + rnd.gauss(0, 0.02)  # the model's own vulnerability, shared by its levels
            tv[str(m)] = {"attacks": {
                "label_only": _row(0.5 + rnd.gauss(0, noise), "label"),
                "rmia_offline": _row(base),                      # access from the registry: confidence
                "lira_online": _row(base - 0.01),
                "rmia_offline@dropout:p=0.01,n=10": _row(0.99),  # not the main query: ignored
                "steps_x": _row(base + gap_steps + rnd.gauss(0, noise), "steps"),
                "spikes_x": _row(0.5 + gap_spikes + rnd.gauss(0, noise), "spikes"),
            }}
        runs[str(seed)] = {"targets": tv}
    return {"target": {"kind": kind, "T": T}, "seeds": runs}


def test_best_by_level_takes_the_largest_of_a_level_and_skips_other_queries():
    rows = {"rmia_offline": _row(0.6), "lira_online": _row(0.62), "rmia_offline@flip": _row(0.9),
            "spikes_x": _row(0.7, "spikes"), "mine": _row(0.99)}  # no access, unregistered: ignored
    best = best_by_level(rows, "auc")
    assert best == {"confidence": (0.62, "lira_online"), "spikes": (0.7, "spikes_x")}


def test_questions_get_verdicts_from_paired_differences():
    study = {"name": "t", "entries": {"snn": _entry(0.2, 0.03), "flat": _entry(0.0, 0.0)}}
    acc = access_summary(study)
    q = {(x["question"], x["entry"]): x for x in acc["questions"]}
    assert q[1, "snn"]["verdict"] == "holds" and q[1, "snn"]["mean"] == pytest.approx(0.2, abs=0.01)
    assert q[2, "snn"]["verdict"] == "holds"
    assert q[1, "flat"]["verdict"] == "not resolved at 95%"
    assert q[2, "flat"]["verdict"] == "not resolved at 95%"
    assert (3, "snn") not in q  # no membrane attack ran: no question 3, and the level is listed missing
    assert acc["missing"]["snn"] == ["membrane"]
    levels = entry_levels(study["entries"]["snn"])
    assert list(levels) == ["label", "confidence", "steps", "spikes"]
    assert levels["confidence"]["attacks"] == {"rmia_offline": 15}
    assert levels["confidence"]["auc"]["n_seeds"] == 3 and levels["confidence"]["auc"]["n_values"] == 15
    text = "\n".join(markdown({**study, "access": acc}))
    assert "| 1: spikes - label | snn |" in text and "holds" in text


def test_a_reversed_difference_is_reported_as_reversed():
    study = {"name": "t", "entries": {"snn": _entry(0.1, -0.05)}}
    q = {x["question"]: x for x in access_summary(study)["questions"]}
    assert q[2]["verdict"] == "reversed" and q[2]["mean"] < 0


def test_no_section_without_levels_other_than_confidence():
    e = {"target": {"kind": "ann"}, "seeds": {"0": {"targets": {"0": {"attacks": {"rmia_offline": _row(0.6)}}}}}}
    assert access_summary({"name": "t", "entries": {"ann": e}}) is None
    assert markdown({"access": None}) == []


def test_figure_has_one_bar_per_entry_and_level_with_their_means():
    study = {"name": "t", "entries": {"snn": _entry(0.2, 0.03), "ann": _entry(0.1, 0.0, kind="ann")}}
    study["access"] = access_summary(study)
    fig = access_figure(study)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    expected = sorted(round(study["access"]["levels"][n][lv]["auc"]["mean"], 6)
                      for n in ("snn", "ann") for lv in study["access"]["levels"][n])
    assert heights == expected and len(heights) == 8
    assert [t.get_text() for t in ax.get_xticklabels()] == ["snn", "ann"]
    assert ax.get_ylabel() == "AUC" and fig.axes[1].get_ylabel() == "TPR@1%FPR"
