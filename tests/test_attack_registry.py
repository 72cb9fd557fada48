"""The attack registry: declarations, the settings and names read off it, today's attacks
unchanged by the move, and a user's attack from a module the tool has never seen."""

import json
import textwrap

import pytest
import torch

import run
from attacks import attack_p, attack_r, lira, reference_ratio, rmia
from audit import AuditSettings
from audit.attacks import ACCESS_LEVELS, REFERENCES, REGISTRY, Attack, default_names
from audit.scoring import ATTACKS, runnable, score_attacks
from core.errors import ConfigError

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_every_registered_attack_declares_what_it_is_and_needs():
    assert {"attack_p", "attack_r", "rmia_offline", "rmia_online", "lira_online", "lira_offline",
            "reference_ratio"} <= set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.description and cls.paper, name
        assert cls.access in ACCESS_LEVELS and cls.references in REFERENCES, name
        assert cls.__module__ == f"audit.attacks.{name}"  # one module per attack
    assert all(REGISTRY[n].access == "confidence" for n in ATTACKS)
    assert list(ATTACKS) == default_names()


def _signals(g, q, n, z):
    phi = torch.randn(q, n, generator=g, dtype=torch.float64) * 2
    phiz = torch.randn(q, z, generator=g, dtype=torch.float64) * 2
    return {"audit/rescaled_logit": phi.float(), "audit/probability": torch.sigmoid(phi.float().double()),
            "population/rescaled_logit": phiz.float(), "population/probability": torch.sigmoid(phiz.float().double())}


def test_registered_attacks_score_exactly_as_the_formulas():
    g = torch.Generator().manual_seed(0)
    k, q, n, z = 4, 2, 50, 30
    target, refs = _signals(g, q, n, z), [_signals(g, q, n, z) for _ in range(k)]
    ref_in = torch.zeros(k, n, dtype=torch.bool)
    ref_in[0] = torch.rand(n, generator=g) < 0.5
    ref_in[1] = ~ref_in[0]
    ref_in[2] = torch.rand(n, generator=g) < 0.5
    ref_in[3] = ~ref_in[2]
    p_t, p_r = target["audit/probability"].double(), torch.stack([r["audit/probability"] for r in refs]).double()
    pz_t, pz_r = target["population/probability"].double(), torch.stack([r["population/probability"] for r in refs]).double()
    phi_t = target["audit/rescaled_logit"].double().mean(0)
    phi_r = torch.stack([r["audit/rescaled_logit"] for r in refs]).double().mean(1)
    want = {
        "attack_p": attack_p(p_t.mean(0)),
        "attack_r": attack_r(p_t.mean(0), p_r.mean(1), ref_in),
        "rmia_offline": rmia(p_t.mean(0), p_r.mean(1), pz_t.mean(0), pz_r.mean(1), ref_in, offline_a=0.4, gamma=1.5),
        "rmia_online": rmia(p_t.mean(0), p_r.mean(1), pz_t.mean(0), pz_r.mean(1), ref_in, gamma=1.5),
        "lira_online": lira(phi_t, phi_r, ref_in, online=True, fix_variance=True),
        "lira_offline": lira(phi_t, phi_r, ref_in, online=False, fix_variance=True),
        "reference_ratio": reference_ratio(p_t.mean(0), p_r.mean(1)),
    }
    got = score_attacks(list(ATTACKS), target, refs, ref_in, rmia_offline_a=0.4, rmia_gamma=1.5)
    assert list(got) == list(ATTACKS)
    for name in ATTACKS:
        assert torch.equal(got[name], want[name]), name
    per_query = score_attacks(["rmia_offline"], target, refs, ref_in, rmia_per_query=True)["rmia_offline"]
    assert torch.equal(per_query, rmia(p_t, p_r, pz_t, pz_r, ref_in, offline_a=0.3, per_query=True))
    free = score_attacks(["lira_online"], target, refs, ref_in, lira_fix_variance=False)["lira_online"]
    assert torch.equal(free, lira(phi_t, phi_r, ref_in, online=True, fix_variance=False))


def test_settings_flags_and_help_come_from_the_registry():
    fields = AuditSettings.__dataclass_fields__
    for cls in REGISTRY.values():
        for key in cls.settings:
            assert key in fields and key in AuditSettings.__doc__
        assert cls.name in AuditSettings.__doc__
    assert AuditSettings().attacks == default_names()
    everything = AuditSettings(attacks="all").check()
    assert [a.name for a in everything.attack_objects()] == list(REGISTRY)
    assert [a.name for a in AuditSettings(attacks=["attack_p", "all"][1:]).attack_objects()] == list(REGISTRY)
    # the report records the settings of the selected attacks only
    assert "rmia_offline_a" not in AuditSettings(attacks=["lira_online"]).describe()
    assert AuditSettings(attacks=["lira_online"]).describe()["lira_fix_variance"] is None


@pytest.mark.parametrize("attacks, words", [
    (["nope"], ["attacks=['nope']", "allowed"]),
    ([], ["attacks=[]"]),
    (["attack_p", "attack_p"], ["listed twice"]),
    ([{"class_path": "no_such_module.Thing"}], ["cannot be imported"]),
    ([{"class_path": "torch.Tensor"}], ["subclass of audit.attacks.Attack"]),
    ([{"class_path": "audit.attacks.attack_p.AttackP", "init_args": {"bogus": 1}}], ["unknown setting", "bogus"]),
])
def test_bad_attack_entries_are_one_clear_error(attacks, words):
    with pytest.raises(ConfigError) as err:
        AuditSettings(attacks=attacks).check("MembershipAttack ")
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


class _NeedsBoth(Attack):
    name = "needs_both"
    references = "in_out"


def test_runnable_reads_each_attacks_declared_references():
    one = torch.tensor([[True, False, True]])
    ok, skipped = runnable([REGISTRY["attack_p"](), _NeedsBoth()], one, [1])
    assert [a.name for a in ok] == ["attack_p"] and "IN and an OUT" in skipped["needs_both"]
    pair = torch.stack([one[0], ~one[0]])
    ok, skipped = runnable([_NeedsBoth()], pair, [1, 2])
    assert len(ok) == 1 and not skipped


OWN = '''
import torch
from audit.attacks import Attack


class Loudness(Attack):
    """A test attack: the target's rescaled logit times a factor."""
    name = "loudness"
    description = "the rescaled logit, scaled"
    paper = "none"
    access = "confidence"
    signals = ("rescaled_logit",)
    references = "none"

    def __init__(self, factor: float = 2.0):
        super().__init__()
        self.factor = factor

    def score(self, data):
        return data.phi_target * self.factor
'''


@pytest.fixture(scope="module")
def own_attack_run(tmp_path_factory):
    """A small run whose callback runs an attack defined in a module written here."""
    tmp = tmp_path_factory.mktemp("own")
    module = "own_attack_" + tmp.name.replace("-", "_")
    (tmp / f"{module}.py").write_text(textwrap.dedent(OWN))
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(tmp))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    rd = tmp / "run"
    logger = "{class_path: lightning.pytorch.loggers.WandbLogger, init_args: {project: mia-test}}"
    attacks = f"[attack_p, rmia_offline, {{class_path: {module}.Loudness, init_args: {{factor: 3.0}}}}]"
    try:
        assert run.main(["fit", "--run_dir", str(rd), "--data.num_references", "2", "--trainer.max_epochs", "2",
                         "--model.width", "0.5", *QUIET, "--trainer.logger", logger,
                         "--trainer.callbacks.attacks", attacks]) == 0
        yield rd, module
    finally:
        mp.undo()


def test_an_attack_of_your_own_lands_in_every_output(own_attack_run):
    from study.report import main_attack_names, markdown
    from wandb_records import read_run

    rd, module = own_attack_run
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert list(report["attacks"]) == ["attack_p", "rmia_offline", "loudness"]
    assert report["attacks"]["loudness"]["access"] == "confidence" and 0 <= report["attacks"]["loudness"]["auc"] <= 1
    assert all("access" in m for m in report["attacks"].values())
    assert all("loudness" in h["attacks"] for h in report["history"])
    assert report["settings"]["own_attacks"] == [{"class_path": f"{module}.Loudness", "init_args": {"factor": 3.0}}]
    assert "| loudness |" in (rd / "audit" / "report.md").read_text()
    files = sorted((rd / "model_0" / "wandb").glob("offline-run-*/run-*.wandb"))
    target = read_run(files[0])
    assert [row["epoch"] for row in target["history"] if "attack/loudness/auc" in row] == [0, 1]
    assert "final/loudness/auc" in target["summary"]
    entry = {"attacks": report["attacks"], "target": report["target"], "converted": False}
    study = {"name": "s", "entries": {"e": entry}, "plan": {}, "main_attacks": main_attack_names({"e": report})}
    assert "loudness" in study["main_attacks"] and "loudness AUC" in markdown(study)


def test_run_audit_takes_an_attack_of_your_own(own_attack_run):
    rd, module = own_attack_run
    out = rd.parent / "own_report"
    assert run.main(["audit", "--run_dir", str(rd), "--data.num_references", "2", "--model.width", "0.5", *QUIET,
                     "--attacks", f"[{{class_path: {module}.Loudness}}]", "--report_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["attacks"]) == ["loudness"]
    # no reference is queried when no selected attack needs one
    assert report["settings"]["signal_cache"] == {"hits": 1}


def test_the_example_attack_runs_on_a_finished_run(own_attack_run):
    rd, _ = own_attack_run
    out = rd.parent / "example_report"
    assert run.main(["audit", "--run_dir", str(rd), "--data.num_references", "2", "--model.width", "0.5", *QUIET,
                     "--attacks", "[{class_path: examples.my_attack.DifficultyCalibration, init_args: {use: median}}]",
                     "--report_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["attacks"]) == ["calibrated_loss"] and report["attacks"]["calibrated_loss"]["auc"] > 0
    with pytest.raises(ConfigError, match="use='mode'"):
        AuditSettings(attacks=[{"class_path": "examples.my_attack.DifficultyCalibration",
                                "init_args": {"use": "mode"}}]).check()


def test_a_study_tabulates_qmia_and_trajectory_when_it_runs_them():
    """QMIA and the trajectory attack are study columns (the Fashion-MNIST study compares them with
    offline RMIA and online LiRA); a study that does not run them has no such column."""
    from study.report import main_attack_names

    row = {"auc": 0.5}
    ran = {"attacks": {"qmia": row, "trajectory": row, "rmia_offline": row, "lira_online": row}}
    assert main_attack_names({"e": ran}) == ["rmia_offline", "lira_online", "qmia", "trajectory"]
    assert main_attack_names({"e": {"attacks": {"rmia_offline": row}}}) == ["rmia_offline"]
