"""`run.py study` (study/runner.py): a matrix of runs on one plan, one combined report."""

import json
import shlex
from pathlib import Path

import pytest
import yaml

from study import study_main

FAST = ["--data.dataset", "digits", "--data.num_references", "2", "--trainer.max_epochs", "1",
        "--model.width", "0.25", "--trainer.enable_progress_bar", "false"]


def write_study(path: Path, run_dir: Path, entries=None, **extra) -> Path:
    spec = {"name": "tiny", "run_dir": str(run_dir), "base_args": FAST,
            "entries": entries if entries is not None else [
                {"name": "ann", "args": ["--model.kind", "ann"]},
                {"name": "snn_T1", "args": ["--model.kind", "snn", "--model.T", "1"]}],
            "audit_args": ["--queries", "[plain]"], **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def checkpoint_mtimes(run_dir: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(run_dir.rglob("*.ckpt"))}


def test_tiny_study_writes_report_and_plots_and_rerun_retrains_nothing(tmp_path, capsys):
    rd = tmp_path / "study"
    cfg = write_study(tmp_path / "s.yml", rd)
    assert study_main(["--config", str(cfg)]) == 0
    out = rd / "study"
    for name in ("report.json", "report.md", "leakage_vs_T.png", "roc_overlay.png", "auc_per_epoch.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "leakage_vs_epsilon.png").exists()  # no entry was trained with DP
    report = json.loads((out / "report.json").read_text())
    assert list(report["entries"]) == ["ann", "snn_T1"]
    assert report["entries"]["ann"]["target"]["kind"] == "ann"
    assert report["entries"]["snn_T1"]["target"]["kind"] == "snn"
    assert report["entries"]["snn_T1"]["target"]["T"] == 1
    # how each entry was made comes from its done.json, not from its flags
    done = json.loads((rd / "snn_T1" / "model_0" / "done.json").read_text())
    assert done["init"] == "scratch" and done["references"] is None and done["hparams"]["T"] == 1
    assert report["entries"]["snn_T1"]["converted"] is False and report["entries"]["snn_T1"]["references"] is None
    assert report["plan"] == json.loads((rd / "ann" / "plan.json").read_text())
    assert report["main_attacks"] == ["attack_p", "attack_r", "rmia_offline", "lira_online"]
    for e in report["entries"].values():
        assert "rmia_offline" in e["curves"] and {"auc", "tpr@0.1%fpr"} <= set(e["attacks"]["rmia_offline"])
    md = (out / "report.md").read_text()
    section = md[md.index("## Queries: plain"):]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header + one row per entry
    assert "rmia_offline TPR@1%FPR" in rows[0] and "test acc" in rows[0] and "distinct conf." in rows[0]
    assert "TPR@0.1%FPR" not in rows[0]  # ~808 non-members cannot measure it
    assert rows[1].startswith("| ann | ann |") and rows[2].startswith("| snn_T1 | snn T=1 |")
    captured = capsys.readouterr()
    printed = captured.out
    assert "snn_T1" in printed and "ann" in printed
    assert max(map(len, printed.splitlines())) <= 120  # as wide as a terminal, not report.md's 250
    assert "entry 1 of 2: ann" in captured.err and "entry 2 of 2: snn_T1" in captured.err
    # each command is echoed so that it can be pasted into a shell as it is
    fit_line = next(line for line in captured.err.splitlines() if line.startswith("study: ann: python run.py fit"))
    argv = shlex.split(fit_line.split(": ", 2)[2])
    assert argv[:3] == ["python", "run.py", "fit"] and "--run_dir" in argv
    audit_line = next(line for line in captured.err.splitlines() if line.startswith("study: ann: python run.py audit"))
    audit_argv = shlex.split(audit_line.split(": ", 2)[2])
    assert audit_argv[:3] == ["python", "run.py", "audit"] and audit_argv[audit_argv.index("--queries") + 1] == "[plain]"
    assert "attack                " not in captured.err  # no per-entry report table inside a study

    before = checkpoint_mtimes(rd)
    assert len(before) == 6  # 2 entries x (target + 2 references)
    assert study_main(["--config", str(cfg)]) == 0
    assert checkpoint_mtimes(rd) == before
    again = json.loads((out / "report.json").read_text())
    assert again["entries"]["snn_T1"]["attacks"] == report["entries"]["snn_T1"]["attacks"]
    for name in ("ann", "snn_T1"):
        hits = again["entries"][name]["settings"].get("signal_cache", {})
        assert hits.get("misses", 0) == 0, hits

    # an entry on another plan (here: another seed) stops the study with its name; no new report
    stamp = (out / "report.json").stat().st_mtime_ns
    other = write_study(tmp_path / "other.yml", rd, entries=[
        {"name": "ann", "args": ["--model.kind", "ann"]},
        {"name": "seed1", "args": ["--model.kind", "ann", "--data.seed", "1", "--trainer.limit_train_batches", "1"]}])
    capsys.readouterr()
    assert study_main(["--config", str(other)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "'seed1'" in err and "seed" in err and "'ann'" in err, err
    assert (out / "report.json").stat().st_mtime_ns == stamp
    assert checkpoint_mtimes(rd / "ann") == {k: v for k, v in before.items() if "/ann/" in k}


def test_failing_run_names_the_entry(tmp_path, capsys):
    rd = tmp_path / "study"
    cfg = write_study(tmp_path / "s.yml", rd, entries=[{"name": "bad", "args": ["--model.kind", "nope"]}])
    assert study_main(["--config", str(cfg)]) == 2  # bad input: refused before anything trains
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "'bad'" in err and "fit" in err
    assert not (rd / "study").exists()


BAD = {
    "no entries": {"run_dir": "R", "entries": []},
    "missing entries": {"run_dir": "R"},
    "duplicate": {"run_dir": "R", "entries": [{"name": "a"}, {"name": "a"}]},
    "slash": {"run_dir": "R", "entries": [{"name": "a/b"}]},
    "unknown key": {"run_dir": "R", "entries": [{"name": "a"}], "epochs": 3},
    "unknown entry key": {"run_dir": "R", "entries": [{"name": "a", "argz": []}]},
    "args not a list": {"run_dir": "R", "entries": [{"name": "a", "args": "--model.kind ann"}]},
    "run_dir in args": {"run_dir": "R", "entries": [{"name": "a", "args": ["--run_dir", "x"]}]},
    "no run_dir": {"entries": [{"name": "a"}]},
    "not a mapping": ["a", "b"],
    "compare typo": {"run_dir": "R", "entries": [{"name": "a"}], "compare": [["qmiaa", "rmia_offline"]]},
    "compare not pairs": {"run_dir": "R", "entries": [{"name": "a"}], "compare": [["qmia"]]},
    "compare same": {"run_dir": "R", "entries": [{"name": "a"}], "compare": [["qmia", "qmia"]]},
}
EXPECT = {"no entries": "entries", "missing entries": "entries", "duplicate": "duplicate", "slash": "'a/b'",
          "unknown key": "'epochs'", "unknown entry key": "'argz'", "args not a list": "args",
          "run_dir in args": "--run_dir", "no run_dir": "run_dir", "not a mapping": "mapping", "compare typo": "unknown attack 'qmiaa'",
          "compare not pairs": "compare[0]=['qmia']", "compare same": "two different attack names"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_file_exits_2_with_one_line(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    spec = BAD[case]
    if isinstance(spec, dict) and spec.get("run_dir") == "R":
        spec = {**spec, "run_dir": str(tmp_path / "R")}
    (tmp_path / "s.yml").write_text(yaml.safe_dump(spec))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert study_main(["--config", str(tmp_path / "s.yml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and EXPECT[case] in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_missing_file_invalid_yaml_and_bad_flag(tmp_path, capsys):
    assert study_main(["--config", str(tmp_path / "nope.yml")]) == 2
    (tmp_path / "broken.yml").write_text("entries: [unclosed\n")
    assert study_main(["--config", str(tmp_path / "broken.yml")]) == 2
    assert study_main([]) == 2
    assert study_main(["--config", str(tmp_path / "broken.yml"), "--frobnicate"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("error:") for line in lines)
    assert "nope.yml" in lines[0] and "YAML" in lines[1] and "--config" in lines[2] and "--frobnicate" in lines[3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yml"]


def test_run_py_routes_study(tmp_path, capsys):
    import run

    assert run.main(["study", "--config", str(tmp_path / "missing.yml")]) == 2
    assert "missing.yml" in capsys.readouterr().err.strip().splitlines()[-1]


def test_reference_overrides_label_rows_and_get_their_own_line(tmp_path):
    """An SNN target audited with ANN references (--references '{kind: ann}') is labelled as
    such in report.md and plotted apart from the SNN entries with references of their own kind."""
    from study.report import markdown, plot_leakage_vs_T

    def entry(T, auc, refs=None):
        return {"args": [], "converted": False, "references": refs, "curves": {}, "history": [],
                "target": {"kind": "snn", "T": T, "test_acc": 0.8},
                "attacks": {"rmia_offline": {"auc": auc, "tpr@1%fpr": 0.01, "tpr@0.1%fpr": 0.001}}}
    study = {"name": "refs", "plan": {"seed": 0}, "main_attacks": ["rmia_offline"],
             "entries": {"snn_T2": entry(2, 0.6), "snn_T4": entry(4, 0.62), "snn_T4_annrefs": entry(4, 0.58, {"kind": "ann"})}}
    rows = [line for line in markdown(study).splitlines() if line.startswith("| snn")]
    assert rows[1].startswith("| snn_T4 | snn T=4 |")
    assert rows[2].startswith("| snn_T4_annrefs | snn T=4, refs kind=ann |")

    from study.report import leakage_figure

    ax = leakage_figure(study).axes[0]
    lines = {c.get_label(): list(c.lines[0].get_xdata()) for c in ax.containers}  # one errorbar series each
    plot_leakage_vs_T(study, tmp_path / "l.png")
    assert lines["rmia_offline SNN"] == [2, 4]
    assert lines["rmia_offline SNN, refs kind=ann"] == [4]
    assert (tmp_path / "l.png").stat().st_size > 0


def test_report_has_one_table_per_query_setting():
    from study.report import markdown

    m = {"auc": 0.6, "tpr@1%fpr": 0.02, "tpr@0.1%fpr": 0.003}
    study = {"name": "q", "plan": {"seed": 0},
             "main_attacks": ["rmia_offline", "rmia_offline@dropout_p0.01_n10"],
             "entries": {"conv_T1": {"args": [], "converted": True, "references": None,
                                     "target": {"kind": "snn", "T": 1, "test_acc": 0.7,
                                                "distinct_confidences": {"plain": 0.04, "dropout_p0.01_n10": 0.61}},
                                     "attacks": {"rmia_offline": m, "rmia_offline@dropout_p0.01_n10": {**m, "auc": 0.65}}}}}
    md = markdown(study).splitlines()
    plain, dropout = md.index("## Queries: plain"), md.index("## Queries: dropout_p0.01_n10")
    assert plain < dropout
    row_plain = next(line for line in md[plain:dropout] if line.startswith("| conv_T1"))
    row_drop = next(line for line in md[dropout:] if line.startswith("| conv_T1"))
    assert row_plain == "| conv_T1 | snn converted T=1 | 0.700 | 0.040 | 0.600 | 0.020 | 0.003 |"
    assert row_drop == "| conv_T1 | snn converted T=1 | 0.700 | 0.610 | 0.650 | 0.020 | 0.003 |"
    assert "rmia_offline AUC" in md[plain + 2] and "@dropout" not in md[plain + 2]


def test_dp_entries_are_labelled_with_epsilon_and_plotted_against_it(tmp_path):
    """A DP study (configs/study/*_dp.yaml): each DP entry's row names the accountant's epsilon,
    and leakage_vs_epsilon.png puts every model's entries on one line over epsilon, no DP last."""
    from study.report import markdown, plot_leakage_vs_epsilon

    def entry(kind, auc, eps=None):
        dp = {"epsilon": eps, "delta": 1e-5, "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10} if eps else None
        return {"args": [], "converted": False, "references": None, "curves": {}, "history": [],
                "target": {"kind": kind, "T": 4 if kind == "snn" else None, "test_acc": 0.8, "dp": dp},
                "attacks": {"rmia_offline": {"auc": auc, "tpr@1%fpr": 0.01, "tpr@0.1%fpr": 0.001}}}
    study = {"name": "dp", "plan": {"seed": 0}, "main_attacks": ["rmia_offline"],
             "entries": {"snn_eps1": entry("snn", 0.50, 0.98), "snn_eps8": entry("snn", 0.52, 7.9),
                         "snn_nodp": entry("snn", 0.56), "ann_eps8": entry("ann", 0.51, 7.9), "ann_nodp": entry("ann", 0.53)}}
    rows = {line.split(" | ")[0][2:]: line for line in markdown(study).splitlines() if line.startswith("| ")}
    assert rows["snn_eps1"].startswith("| snn_eps1 | snn T=4, DP eps=0.98 |")
    assert rows["snn_nodp"].startswith("| snn_nodp | snn T=4 |")

    from study.report import leakage_epsilon_figure

    plot_leakage_vs_epsilon(study, tmp_path / "e.png")
    ax = leakage_epsilon_figure(study).axes[0]
    lines = {c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata())) for c in ax.containers}
    assert lines["rmia_offline SNN T=4"] == ([0.98, 7.9, 7.9 * 4], [0.50, 0.52, 0.56])  # no DP sits at 4 x the largest
    assert lines["rmia_offline ANN"] == ([7.9, 7.9 * 4], [0.51, 0.53])
    assert (tmp_path / "e.png").stat().st_size > 0

    # With a multi-seed summary, each point is the summary's mean and its bar spans the summary's interval.
    study["summary"] = {"snn_eps8": {"attacks": {"rmia_offline": {"auc": {"mean": 0.53, "ci": [0.51, 0.57]}}}}}
    c = next(c for c in leakage_epsilon_figure(study).axes[0].containers if c.get_label() == "rmia_offline SNN T=4")
    assert list(c.lines[0].get_ydata()) == [0.50, 0.53, 0.56]
    segments = c.lines[2][0].get_segments()  # one vertical bar per point, in x order
    assert [tuple(seg[:, 1]) for seg in segments] == [(0.50, 0.50), (0.51, 0.57), (0.56, 0.56)]


def _run_with(seed_values: dict) -> dict:
    """A study run record of the shape write_study_report stores: two targets per seed."""
    return {"target": {"kind": "snn", "T": 4}, "attacks": {},
            "targets": {str(m): {"test_acc": 0.8, "attacks": {"rmia_offline": {"auc": v}}}
                        for m, v in enumerate(seed_values)}}


def test_verdicts_pair_targets_within_seeds_and_use_the_seed_as_the_unit():
    from study.verdicts import aggregate

    def entry(kind, T, per_seed, converted=False):
        return {"converted": converted, "references": None, "target": {"kind": kind, "T": T},
                "seeds": {str(s): _run_with(v) for s, v in per_seed.items()}, "attacks": {}}

    ann = entry("ann", None, {0: [0.60, 0.62], 1: [0.58, 0.60], 2: [0.61, 0.63]})
    snn1 = entry("snn", 1, {0: [0.61, 0.63], 1: [0.59, 0.61], 2: [0.62, 0.64]})   # ANN + 0.01 everywhere
    snn4 = entry("snn", 4, {0: [0.65, 0.67], 1: [0.63, 0.66], 2: [0.66, 0.69]})   # T=1 + 0.04..0.05
    out = aggregate({"entries": {"ann": ann, "snn_T1": snn1, "snn_T4": snn4}})
    f1 = next(f for f in out["findings"] if f["finding"] == 1 and f["attack"] == "rmia_offline")
    assert f1["verdict"] == "holds" and f1["n_seeds"] == 3 and abs(f1["mean"] - 0.26 / 6) < 1e-9
    assert f1["basis"] == "t over 3 seeds"
    f3 = [f for f in out["findings"] if f["finding"] == 3 and f["attack"] == "rmia_offline"]
    assert {f["comparison"] for f in f3} == {"snn_T1 - ann", "snn_T4 - ann"}
    same = next(f for f in f3 if f["comparison"] == "snn_T1 - ann")  # +0.01 in every pair: zero spread
    assert abs(same["mean"] - 0.01) < 1e-9 and same["verdict"] == "holds"
    s = out["summary"]["snn_T4"]["attacks"]["rmia_offline"]["auc"]
    assert s["n_seeds"] == 3 and s["n_values"] == 6 and s["ci"][0] < s["mean"] < s["ci"][1]
    # reversed: the SNN at the larger T leaks less than at T = 1
    low = entry("snn", 4, {0: [0.55, 0.56], 1: [0.54, 0.55], 2: [0.56, 0.57]})
    out = aggregate({"entries": {"snn_T1": snn1, "snn_T4": low}})
    assert next(f for f in out["findings"] if f["attack"] == "rmia_offline")["verdict"] == "reversed"
    # one seed: the interval falls back to the targets, and says so
    one = aggregate({"entries": {"ann": entry("ann", None, {0: [0.6, 0.62, 0.61]})}})
    assert one["summary"]["ann"]["attacks"]["rmia_offline"]["auc"]["basis"] == "t over the 3 targets of one seed"


def test_a_study_with_seeds_trains_each_entry_per_seed_and_reports_verdicts(tmp_path, capsys):
    rd = tmp_path / "study"
    cfg = write_study(tmp_path / "s.yaml", rd, seeds=[0, 1], compare=[["reference_ratio", "attack_p"]])
    assert study_main(["--config", str(cfg)]) == 0
    for seed in (0, 1):
        for name in ("ann", "snn_T1"):
            done = json.loads((rd / f"seed_{seed}" / name / "model_0" / "done.json").read_text())
            assert done["plan"]["seed"] == seed and done["hparams"]["kind"] == name[:3]
            report = json.loads((rd / f"seed_{seed}" / name / "audit" / "report.json").read_text())
            assert sorted(report["targets"]) == ["0", "1", "2"]  # every model audited as the target
    study = json.loads((rd / "study" / "report.json").read_text())
    assert study["seeds"] == [0, 1] and set(study["plans"]) == {"0", "1"}
    auc = study["summary"]["snn_T1"]["attacks"]["reference_ratio"]["auc"]
    assert auc["n_seeds"] == 2 and auc["n_values"] == 6 and auc["basis"] == "t over 2 seeds"
    # with K = 2, models 1 and 2 as targets have unpaired references (0 and the other one), so a
    # quarter of the samples lack an OUT reference: offline RMIA runs for target 0 only
    assert study["summary"]["snn_T1"]["attacks"]["rmia_offline"]["auc"]["n_values"] == 2
    finding = next(f for f in study["findings"] if f["finding"] == 3 and f["attack"] == "rmia_offline")
    assert finding["comparison"] == "snn_T1 - ann"
    # the paired difference is the mean over seeds of target 0's AUC, SNN minus ANN, read here off
    # each entry's own audit report; the verdict is what that interval says (+1: SNN leaks more)
    diffs = [json.loads((rd / f"seed_{s}" / "snn_T1" / "audit" / "report.json").read_text())["attacks"]["rmia_offline"]
             ["auc"] - json.loads((rd / f"seed_{s}" / "ann" / "audit" / "report.json").read_text())["attacks"]
             ["rmia_offline"]["auc"] for s in (0, 1)]
    assert finding["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-12)
    lo, hi = finding["ci"]
    assert lo < finding["mean"] < hi
    assert finding["verdict"] == ("holds" if lo > 0 else "reversed" if hi < 0 else "not resolved at 95%")
    md = (rd / "study" / "report.md").read_text()
    assert "## The paper's findings" in md and "snn_T1 - ann" in md and " [" in md
    # compare: reference_ratio minus attack_p on the same targets, with the counted costs
    comp = {(d["entry"], d["metric"]): d for d in study["attack_comparisons"]["differences"]}
    assert comp["snn_T1", "auc"]["n_values"] == 6 and comp["snn_T1", "auc"]["a"] == "reference_ratio"
    assert study["attack_comparisons"]["costs"]["ann"] == {
        "reference_ratio": {"models_trained": 2, "inference_passes": 3},
        "attack_p": {"models_trained": 0, "inference_passes": 1}}
    assert "## Attacks compared" in md and "| ann | reference_ratio - attack_p |" in md
    assert (rd / "study" / "leakage_vs_T.png").stat().st_size > 10_000
    capsys.readouterr()
    # --seeds: a subset of the file's seeds, trained nothing new here, reported alone
    before = checkpoint_mtimes(rd)
    assert study_main(["--config", str(cfg), "--seeds", "1"]) == 0
    assert checkpoint_mtimes(rd) == before
    assert json.loads((rd / "study" / "report.json").read_text())["seeds"] == [1]
    capsys.readouterr()
    for bad in ("3", "0,0", "one"):
        assert study_main(["--config", str(cfg), "--seeds", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --seeds") and "[0, 1]" in err and len(err.splitlines()) == 1
    assert checkpoint_mtimes(rd) == before


def test_seeds_flag_is_refused_for_a_study_without_seeds(tmp_path, capsys):
    cfg = write_study(tmp_path / "s.yaml", tmp_path / "study")
    assert study_main(["--config", str(cfg), "--seeds", "0"]) == 2
    assert "has no `seeds` key" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_dp_section_checks_every_targets_eps_lb_against_the_accountant():
    """The study's DP table takes the largest eps_lb over attacks, targets and seeds, and flags a
    DP entry whose bound exceeds the accountant's epsilon."""
    from study.report import dp_section

    def entry(eps, lbs):
        dp = {"epsilon": eps, "delta": 1e-5, "noise_multiplier": 1.1, "sample_rate": 0.06, "steps": 160}
        targets = {str(m): {"attacks": {"rmia_offline": {"auc": 0.5, "eps_lb": lb}, "attack_p": {"auc": 0.5, "eps_lb": 0.0}}}
                   for m, lb in enumerate(lbs)}
        return {"converted": False, "references": None, "target": {"kind": "ann", "dp": dp, "test_acc": 0.8},
                "attacks": {}, "seeds": {"None": {"targets": targets}}}
    study = {"entries": {"fine": entry(1.0, [0.2, 0.9, 0.0]), "broken": entry(1.0, [0.1, 1.7, 0.3])}}
    rows = {line.split(" | ")[0][2:]: line for line in dp_section(study) if line.startswith("| ")}
    assert "| 0.900 | rmia_offline, target 1 | yes |" in rows["fine"]
    assert "| 1.700 | rmia_offline, target 1 | **NO" in rows["broken"]


def test_study_intervals_stay_in_range_and_one_target_keeps_its_own_interval():
    from study.verdicts import entry_summary

    run = {"targets": {"0": {"test_acc": 0.9, "attacks": {"rmia_offline": {"auc": 0.61, "auc_ci": [0.58, 0.64]},
                                                          "attack_p": {"auc": 0.5, "tpr@1%fpr": 0.0}}},
                       "1": {"test_acc": 0.9, "attacks": {"attack_p": {"auc": 0.5, "tpr@1%fpr": 0.02}}},
                       "2": {"test_acc": 0.9, "attacks": {"attack_p": {"auc": 0.5, "tpr@1%fpr": 0.0}}}}}
    s = entry_summary({"seeds": {"0": run}})
    assert s["attacks"]["rmia_offline"]["auc"]["ci"] == [0.58, 0.64]  # one target: its own DeLong interval
    assert "own interval" in s["attacks"]["rmia_offline"]["auc"]["basis"]
    tpr = s["attacks"]["attack_p"]["tpr@1%fpr"]
    assert tpr["ci"][0] == 0.0 and tpr["ci"][1] > 0.02  # the t-interval would go below 0


def test_report_states_train_and_test_accuracy_and_gap_with_intervals():
    """The study's report.md has an accuracy table: each entry's train and test accuracy and gap,
    averaged over seeds x targets with the 95% interval over the per-seed means."""
    from study.report import markdown
    from study.verdicts import aggregate

    def run(accs):  # one seed: (train, test) per target
        return {"target": {"kind": "ann"}, "attacks": {},
                "targets": {str(m): {"train_acc": tr, "test_acc": te, "acc_gap": tr - te,
                                     "attacks": {"rmia_offline": {"auc": 0.6}}} for m, (tr, te) in enumerate(accs)}}
    seeds = {"0": run([(0.95, 0.85), (0.93, 0.85)]), "1": run([(0.92, 0.86), (0.94, 0.84)]),
             "2": run([(0.96, 0.83), (0.94, 0.87)])}
    study = {"name": "acc", "plan": {"seed": 0}, "seeds": [0, 1, 2], "main_attacks": ["rmia_offline"],
             "entries": {"ann": {"args": [], "converted": False, "references": None, "attacks": {},
                                 "target": {"kind": "ann", "train_acc": 0.95, "test_acc": 0.85}, "seeds": seeds}}}
    study.update(aggregate(study))
    md = markdown(study).splitlines()
    head = md.index("| entry | model | train acc | test acc | gap |")
    row = md[head + 2]
    # per-seed means: train 0.94, 0.93, 0.95 (mean 0.94); test 0.85, 0.85, 0.85; gap 0.09, 0.08, 0.10
    # t(0.975, 2) = 4.303; sd of (0.94, 0.93, 0.95) = 0.01, so the half-width is 4.303 * 0.01 / sqrt(3) = 0.0248
    assert row == "| ann | ann | 0.940 [0.915, 0.965] | 0.850 [0.850, 0.850] | 0.090 [0.065, 0.115] |"
    assert md.index("## Accuracy") < md.index("## Queries: plain")


@pytest.mark.parametrize("entries, audit_args, said", [
    # a typo in the last entry's flags, and one in the audit flags (the same for every entry)
    ([{"name": "ann", "args": ["--model.kind", "ann"]}, {"name": "snn_T1", "args": ["--model.kindd", "snn"]}],
     ["--queries", "[plain]"], "entry 'snn_T1 (seed 0)': run.py fit: Unrecognized arguments: --model.kindd"),
    ([{"name": "ann", "args": ["--model.kind", "ann"]}, {"name": "snn_T1", "args": ["--model.T", "0"]}],
     ["--queries", "[plain]"], "entry 'snn_T1 (seed 0)': run.py fit:"),
    ([{"name": "ann", "args": ["--model.kind", "ann"]}, {"name": "snn_T1", "args": ["--model.kind", "snn"]}],
     ["--queries", "[nope]"], "entry 'ann (seed 0)': run.py audit: queries=['nope']"),
    ([{"name": "ann", "args": ["--model.kind", "ann"]}, {"name": "snn_T1", "args": ["--model.kind", "snn"]}],
     ["--latencies", "[0]"], "entry 'ann (seed 0)': run.py audit: latencies=[0]"),
    # sizes below the minimums (docs/limits.md) in the last entry, and an audit subset below its own
    ([{"name": "ann", "args": ["--model.kind", "ann"]}, {"name": "snn_T1", "args": ["--data.audit_size", "20"]}],
     ["--queries", "[plain]"], "entry 'snn_T1 (seed 0)': run.py fit: data.audit_size=20 is not allowed; expected an "
                               "integer in [50, inf]"),
    ([{"name": "ann", "args": ["--model.kind", "ann"]}, {"name": "snn_T1", "args": ["--data.population", "10"]}],
     ["--queries", "[plain]"], "entry 'snn_T1 (seed 0)': run.py fit: data.population=10 is below the minimum of 100"),
    ([{"name": "ann", "args": ["--model.kind", "ann"]}, {"name": "snn_T1", "args": ["--model.kind", "snn"]}],
     ["--audit_subset", "10"], "entry 'ann (seed 0)': run.py audit: audit_subset=10 is not allowed"),
])
def test_every_entry_is_checked_before_anything_trains(tmp_path, capsys, entries, audit_args, said):
    import time

    rd = tmp_path / "study"
    cfg = write_study(tmp_path / "s.yaml", rd, entries=entries, seeds=[0, 1], audit_args=audit_args)
    before = sorted(tmp_path.rglob("*"))
    start = time.monotonic()
    assert study_main(["--config", str(cfg)]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {said}"), err
    assert sorted(tmp_path.rglob("*")) == before and not rd.exists()  # nothing trained, nothing written


def _dp_audit_report(kind, eps=None, natural=(0.0, 0.0, 0.0), canary=None, white=None):
    """An entry's audit report.json of the shape `run.py audit --targets all` writes: model 0 and
    two rotated targets with their eps_lb, the black-box `canary_audit`, and target.dp with its
    white-box `audit_canaries`."""
    dp = None if eps is None else {"epsilon": eps, "delta": 1e-5, "noise_multiplier": 0.9, "sample_rate": 0.06,
                                   "steps": 160, "audit_canaries": white}
    targets = {str(m): {"test_acc": 0.7, "attacks": {"attack_p": {"auc": 0.5, "eps_lb": lb},
                                                     "rmia_offline": {"auc": 0.5, "eps_lb": lb / 2}}}
               for m, lb in enumerate(natural)}
    return {"target": {"kind": kind, "T": 4 if kind == "snn" else None, "index": 0, "test_acc": 0.71, "dp": dp},
            "attacks": targets["0"]["attacks"], "targets": targets, "history": [],
            "curves": {"rmia_offline": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.5, 1.0]}},
            "canary_audit": canary}


def test_dp_audit_table_puts_every_bound_beside_the_accountants_epsilon(tmp_path):
    """write_study_report carries each entry's canary audits into the study report, and report.md's
    DP audit table gives, per entry, the accountant's epsilon, model 0's natural eps_lb and the
    largest over every target, the black-box and white-box canary bounds with right / guesses, and
    eps_lb / epsilon; a DP entry with a bound above its epsilon is flagged."""
    from study.report import write_study_report

    def audit(eps_lb, correct, guesses, **extra):
        return {"count": 1000, "guesses": guesses, "correct": correct, "eps_lb": eps_lb, "delta": 1e-5, **extra}
    reports = {
        ("ann_eps8", None): _dp_audit_report("ann", 7.99, natural=(0.06, 0.4, 0.1),
                                             canary=audit(0.3, 60, 100, kind="noise"),
                                             white={**audit(1.6, 180, 200), "count": 2000}),
        ("snn_eps1", None): _dp_audit_report("snn", 0.99, canary=audit(2.5, 199, 200, kind="noise"),
                                             white={**audit(0.2, 70, 100), "count": 2000}),
        ("ann_nodp", None): _dp_audit_report("ann", natural=(1.2, 0.3, 1.8), canary=audit(4.1, 400, 400, kind="noise")),
    }
    spec = {"name": "dp_canaries", "run_dir": str(tmp_path / "study"), "base_args": [], "audit_args": [],
            "entries": [{"name": n, "args": []} for n, _ in reports]}
    study = write_study_report(spec, {None: {"seed": 0}}, reports, {k: {"init": "scratch"} for k in reports},
                               lambda spec, seed: tmp_path / "study")
    saved = json.loads((tmp_path / "study" / "study" / "report.json").read_text())
    assert saved["entries"]["ann_eps8"]["canary_audit"]["eps_lb"] == 0.3
    assert saved["entries"]["ann_eps8"]["seeds"]["None"]["canary_audit"]["correct"] == 60
    rows = {r["entry"]: r for r in saved["dp_audit"]}
    assert rows["ann_eps8"]["epsilon"] == 7.99 and rows["ann_eps8"]["natural_eps_lb"] == 0.06
    assert rows["ann_eps8"]["natural_eps_lb_every_target"] == 0.4
    assert rows["ann_eps8"]["natural_every_target_from"] == "attack_p, target 1"
    assert rows["ann_eps8"]["whitebox_ratio"] == pytest.approx(1.6 / 7.99)
    assert rows["snn_eps1"]["above_epsilon"] == ["black-box canaries"]
    assert rows["ann_nodp"]["epsilon"] is None and rows["ann_nodp"]["whitebox"] is None
    assert "above_epsilon" not in rows["ann_nodp"]

    md = (tmp_path / "study" / "study" / "report.md").read_text().splitlines()
    head = next(i for i, line in enumerate(md) if line.startswith("| entry | model | epsilon (accountant) | test acc "
                                                                     "| natural eps_lb (model 0)"))
    assert md[head - 4].startswith("## DP audit")
    table = {line.split(" | ")[0][2:]: line for line in md[head + 2:head + 5]}
    assert table["ann_eps8"] == ("| ann_eps8 | ann, DP eps=7.99 | 7.99 | 0.710 | 0.060 (attack_p) | 0.400 (attack_p, target 1) "
                                 "| 1000 noise | 0.300 (60 / 100) | 2000 | 1.600 (180 / 200) | 0.200 | yes |")
    assert table["snn_eps1"].endswith("| 2000 | 0.200 (70 / 100) | 0.202 | **NO: black-box canaries** |")
    assert table["ann_nodp"] == ("| ann_nodp | ann | inf (no DP) | 0.710 | 1.200 (attack_p) | 1.800 (attack_p, target 2) "
                                 "| 1000 noise | 4.100 (400 / 400) | none | n/a | n/a | (no DP) |")
    assert study["dp_audit"] == saved["dp_audit"]


def test_dp_audit_table_only_with_a_dp_claim_or_canaries():
    from study.report import dp_audit_rows, dp_audit_section

    plain = {"entries": {"ann": {**_dp_audit_report("ann"), "converted": False, "references": None}}}
    assert dp_audit_rows(plain) == [] and dp_audit_section(plain) == []
    canaries = {"entries": {"ann": {**_dp_audit_report("ann", canary={"count": 10, "kind": "mislabel", "guesses": 10,
                                                                      "correct": 9, "eps_lb": 0.5, "delta": 0.0}),
                                    "converted": False, "references": None}}}
    section = dp_audit_section(canaries)
    assert section[0].startswith("## DP audit") and any("| 10 mislabel | 0.500 (9 / 10) |" in s for s in section)
