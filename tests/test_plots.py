"""What the plots draw, read back from their matplotlib objects: axes, labels, scales, the
number of curves, and that each curve's data are the numbers it stands for (roc.png,
latency.png, the study's ROC overlay and per-epoch AUC)."""

import numpy as np
import pytest
import torch

from attacks import roc_metrics
from attacks.plots import histogram_figure, roc_figure
from audit.report import latency_figure
from study.report import ROC_ATTACK, epochs_figure, roc_overlay_figure


@pytest.fixture
def three():
    g = torch.Generator().manual_seed(0)
    member = torch.rand(400, generator=g) < 0.5
    a = torch.randn(400, generator=g, dtype=torch.float64) + member * 1.0
    b = torch.randn(400, generator=g, dtype=torch.float64) + member * 0.3
    return member, {"attack_a": roc_metrics(a, member), "attack_b": roc_metrics(b, member),
                    "attack_c": roc_metrics(a.clone(), member)}  # c coincides with a


def _curves(ax):
    return [line for line in ax.get_lines() if line.get_label() != "chance" and line.get_color() != "grey"]


def test_roc_figure_draws_each_attacks_own_fpr_and_tpr_on_linear_and_log_log_axes(three):
    member, metrics = three
    fig = roc_figure(metrics, title="digits", label_metric="tpr@1%fpr")
    lin, log = fig.axes
    assert fig.get_suptitle() == "ROC: digits"
    for ax in (lin, log):
        assert ax.get_xlabel() == "false positive rate" and ax.get_ylabel() == "true positive rate"
    assert (lin.get_xscale(), lin.get_yscale()) == ("linear", "linear")
    assert (log.get_xscale(), log.get_yscale()) == ("log", "log")
    lin_curves, log_curves = _curves(lin), _curves(log)
    assert len(lin_curves) == len(log_curves) == 2  # a and c coincide: drawn once
    labels = [c.get_label() for c in lin_curves]
    assert labels[0].startswith("attack_a (= attack_c): AUC ") and labels[1].startswith("attack_b: AUC ")
    for curve, log_curve, name in zip(lin_curves, log_curves, ("attack_a", "attack_b")):
        m = metrics[name]
        assert f"AUC {m['auc']:.3f}, TPR@1% {m['tpr@1%fpr']:.3f}" in curve.get_label()
        fpr, tpr = np.asarray(m["fpr"], dtype=float), np.asarray(m["tpr"], dtype=float)
        np.testing.assert_array_equal(curve.get_xdata(), fpr)
        np.testing.assert_array_equal(curve.get_ydata(), tpr)
        np.testing.assert_array_equal(log_curve.get_xdata(), fpr[fpr > 0])  # a log axis cannot show FPR 0
        np.testing.assert_array_equal(log_curve.get_ydata(), tpr[fpr > 0])
    assert len({(c.get_color(), c.get_linestyle()) for c in lin_curves}) == 2
    smallest = min(float(np.asarray(m["fpr"])[np.asarray(m["fpr"]) > 0].min()) for m in metrics.values())
    assert log.get_xlim() == pytest.approx((smallest / 2, 1))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*labels, "chance"]


def test_histogram_figure_shows_member_and_non_member_densities(three):
    member, _ = three
    scores = torch.linspace(0, 1, 400, dtype=torch.float64)
    fig = histogram_figure(scores, member, title="scores", bins=20)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "attack score (higher = member)" and ax.get_ylabel() == "density"
    assert ax.get_title() == "scores"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"members ({int(member.sum())})", f"non-members ({int((~member).sum())})"]
    assert len(ax.containers) == 2  # one histogram each, in the legend's order
    for c in ax.containers:
        assert len(c.patches) == 20
        area = sum(p.get_height() * p.get_width() for p in c.patches)
        assert area == pytest.approx(1.0)  # densities


def test_latency_figure_draws_one_line_per_setting_at_its_latencies():
    series = {"rmia_offline": {"t": [1, 2, 4], "auc": [0.51, 0.55, 0.6], "tpr@0.1%fpr": [0.001, 0.002, 0.004]},
              "attack_p": {"t": [1, 2, 4], "auc": [0.5, 0.52, 0.53], "tpr@0.1%fpr": [0.001, 0.001, 0.002]},
              "rmia_online": {"t": [1, 2, 4], "auc": [0.51, 0.55, 0.6], "tpr@0.1%fpr": [0.001, 0.002, 0.004]}}
    fig = latency_figure(series, title="snn T=4")
    auc_ax, tpr_ax = fig.axes
    assert auc_ax.get_ylabel() == "attack AUC" and tpr_ax.get_ylabel() == "TPR at 0.1% FPR"
    assert auc_ax.get_xlabel().startswith("latency t") and list(auc_ax.get_xticks()) == [1, 2, 4]
    assert fig.get_suptitle() == "Leakage against latency: snn T=4"
    for ax, key in ((auc_ax, "auc"), (tpr_ax, "tpr@0.1%fpr")):
        lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert set(lines) == {"rmia_offline (= rmia_online)", "attack_p"}  # identical series drawn once
        for label, line in lines.items():
            name = label.split(" ")[0]
            assert list(line.get_xdata()) == series[name]["t"] and list(line.get_ydata()) == series[name][key]
        chance = [line for line in ax.get_lines() if line.get_label().startswith("_")]
        assert [list(line.get_ydata()) for line in chance] == [[0.5, 0.5] if key == "auc" else [0.001, 0.001]]


def test_latency_figure_without_a_measurable_tpr_has_the_auc_panel_only():
    fig = latency_figure({"rmia_offline": {"t": [1, 2], "auc": [0.5, 0.6]}})
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "attack AUC"


def _entry(kind, T, fpr, tpr, auc, history=()):
    return {"args": [], "converted": False, "references": None, "target": {"kind": kind, "T": T, "test_acc": 0.8},
            "curves": {ROC_ATTACK: {"fpr": fpr, "tpr": tpr}}, "attacks": {ROC_ATTACK: {"auc": auc}},
            "history": list(history)}


def test_study_roc_overlay_draws_every_entry_on_log_log_axes():
    study = {"name": "s", "plan": {"seed": 0}, "main_attacks": [ROC_ATTACK], "entries": {
        "snn_T4": _entry("snn", 4, [0.0, 0.01, 0.5, 1.0], [0.0, 0.05, 0.7, 1.0], 0.61),
        "ann": _entry("ann", None, [0.0, 0.02, 1.0], [0.1, 0.2, 1.0], 0.55)}}
    fig = roc_overlay_figure(study)
    (ax,) = fig.axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("FPR", "TPR") and ax.get_title() == f"{ROC_ATTACK} ROC, every entry"
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"snn_T4 (snn T=4), AUC 0.610", "ann (ann), AUC 0.550"}
    floor = 0.01 / 2  # half the smallest positive FPR: where the log axes show 0
    assert list(lines["snn_T4 (snn T=4), AUC 0.610"].get_xdata()) == [floor, 0.01, 0.5, 1.0]
    assert list(lines["snn_T4 (snn T=4), AUC 0.610"].get_ydata()) == [floor, 0.05, 0.7, 1.0]
    assert list(lines["ann (ann), AUC 0.550"].get_ydata()) == [0.1, 0.2, 1.0]
    assert ax.get_xlim() == pytest.approx((floor, 1))


def test_study_epochs_figure_draws_each_entrys_auc_per_epoch():
    hist = [{"epoch": e, "attacks": {ROC_ATTACK: {"auc": a}}} for e, a in ((0, 0.5), (1, 0.55), (2, 0.6))]
    study = {"name": "s", "plan": {"seed": 0}, "main_attacks": [ROC_ATTACK], "entries": {
        "snn_T4": _entry("snn", 4, [0, 1], [0, 1], 0.6, hist), "ann": _entry("ann", None, [0, 1], [0, 1], 0.5)}}
    fig = epochs_figure(study)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "epoch (1 = the first)" and ax.get_ylabel() == f"{ROC_ATTACK} AUC"
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == ["snn_T4 (snn T=4)"]  # the entry without a history draws nothing
    assert list(lines[0].get_xdata()) == [1, 2, 3] and list(lines[0].get_ydata()) == [0.5, 0.55, 0.6]
