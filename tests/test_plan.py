"""The membership plan's invariants (docs/design.md, "The membership plan")."""

import json
import subprocess
import sys

import pytest
import torch

from core.errors import ConfigError
from datamodules import MembershipDataModule, load_plan, make_plan, save_plan
from datamodules.plan import load_or_create_plan, resolve_population

SETTINGS = dict(dataset="digits", pool_size=1797, num_references=6, seed=3)


def test_rows_are_halves_and_references_are_complementary_pairs():
    plan = make_plan(**SETTINGS)
    k, n = 6, plan.fingerprint["audit_size"]
    assert plan.membership.shape == (1 + k, n) and plan.membership.dtype == torch.bool
    assert plan.membership[0].sum() == n // 2
    for i in range(1, k // 2 + 1):
        a, b = plan.membership[2 * i - 1], plan.membership[2 * i]
        assert torch.equal(b, ~a)
        assert a.sum() == n // 2
    # every audit sample is IN for exactly K/2 references and OUT for K/2
    assert torch.all(plan.membership[1:].sum(0) == k // 2)
    # the rows are not copies of each other
    assert not torch.equal(plan.membership[0], plan.membership[1])
    assert not torch.equal(plan.membership[1], plan.membership[3])


def test_population_is_held_out_of_every_training_set():
    plan = make_plan(**SETTINGS)
    assert len(plan.population_indices) == 180  # 10% of digits
    pop = set(plan.population_indices.tolist())
    audit = plan.audit_indices.tolist()
    assert not pop & set(audit)
    assert len(pop | set(audit)) == 1797
    for row in plan.membership:
        trained_on = set(plan.audit_indices[row].tolist())
        assert not trained_on & pop


def test_population_defaults_and_forms():
    assert resolve_population(None, 1797) == 180
    assert resolve_population(None, 70_000) == 1000
    assert resolve_population(0.25, 1000) == 250
    assert resolve_population(123, 1000) == 123
    assert resolve_population(None, 400) == 100  # 10% would be 40: the default never goes below the minimum
    assert resolve_population(0.1, 1000) == 100 and resolve_population(100, 1000) == 100
    for bad in (0, -1, 1.5, 0.0, 999, "x", 99, 0.09):
        with pytest.raises(ConfigError, match="data.population"):
            resolve_population(bad, 1000)


def test_same_seed_same_plan_other_seed_other_plan():
    a, b = make_plan(**SETTINGS), make_plan(**SETTINGS)
    assert torch.equal(a.membership, b.membership) and torch.equal(a.population_indices, b.population_indices)
    c = make_plan(**{**SETTINGS, "seed": 4})
    assert not torch.equal(a.membership, c.membership)


def test_plan_is_identical_in_another_process(tmp_path):
    code = (
        "import torch; from datamodules.plan import make_plan;"
        "p = make_plan(dataset='digits', pool_size=1797, num_references=6, seed=3);"
        f"torch.save({{'m': p.membership, 'z': p.population_indices}}, {str(tmp_path / 'p.pt')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    other = torch.load(tmp_path / "p.pt", weights_only=True)
    plan = make_plan(**SETTINGS)
    assert torch.equal(other["m"], plan.membership) and torch.equal(other["z"], plan.population_indices)


def test_reload_equality_and_fingerprint(tmp_path):
    plan = make_plan(**SETTINGS)
    save_plan(plan, tmp_path)
    again = load_plan(tmp_path)
    assert torch.equal(again.membership, plan.membership)
    assert torch.equal(again.audit_indices, plan.audit_indices)
    assert torch.equal(again.population_indices, plan.population_indices)
    fp = json.loads((tmp_path / "plan.json").read_text())
    assert {"dataset", "pool_size", "seed", "num_references", "population"} <= set(fp)


def test_mismatch_is_an_error_naming_the_difference_and_nothing_is_overwritten(tmp_path):
    load_or_create_plan(tmp_path, **SETTINGS)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match=r"num_references: plan has 6, config gives 4"):
        load_or_create_plan(tmp_path, **{**SETTINGS, "num_references": 4})
    with pytest.raises(ConfigError, match=r"seed: plan has 3, config gives 9"):
        load_or_create_plan(tmp_path, **{**SETTINGS, "seed": 9})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_check_waits_for_a_plan_another_process_is_still_writing(tmp_path):
    # A SLURM array's tasks start together: one draws the plan (plan.pt, then plan.json) under
    # the plan lock while another only checks it (save=False, the audit callback's check before
    # training). The check must wait for the lock, not see plan.pt alone and call it incomplete.
    import shutil
    import threading
    import time

    from core.rundir import PlanLock

    drawn = tmp_path / "drawn"
    load_or_create_plan(drawn, **SETTINGS)
    run = tmp_path / "run"
    run.mkdir()
    half_written = threading.Event()

    def writer():
        with PlanLock(run):
            shutil.copy(drawn / "plan.pt", run / "plan.pt")
            half_written.set()
            time.sleep(0.5)
            shutil.copy(drawn / "plan.json", run / "plan.json")

    t = threading.Thread(target=writer)
    t.start()
    assert half_written.wait(10)
    plan = load_or_create_plan(run, save=False, **SETTINGS)
    t.join()
    assert torch.equal(plan.membership, load_plan(drawn).membership)


def test_corrupt_plan_is_an_error_naming_the_file(tmp_path):
    load_or_create_plan(tmp_path, **SETTINGS)
    (tmp_path / "plan.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="plan.pt"):
        load_or_create_plan(tmp_path, **SETTINGS)


@pytest.mark.parametrize("k", [1, 3, -2])
def test_odd_or_negative_k_is_refused(k):
    with pytest.raises(ConfigError, match="num_references"):
        make_plan(**{**SETTINGS, "num_references": k})


def test_datamodule_exposes_the_plan_and_loads_each_models_split(tmp_path):
    dm = MembershipDataModule(num_references=2, model_index=2, run_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.membership.shape[0] == 3 and len(dm.population_indices) == 180
    n = dm.membership.shape[1]
    # the training set is model 2's members; validation its non-members
    train = torch.cat([b[2] for b in dm.train_dataloader()])
    val = torch.cat([b[2] for b in dm.val_dataloader()])
    assert set(train.tolist()) == set(dm.membership[2].nonzero().squeeze(1).tolist())
    assert set(val.tolist()) == set((~dm.membership[2]).nonzero().squeeze(1).tolist())
    assert len(train) + len(val) == n
    # test = the population; audit = every audit sample once, in order
    assert sum(len(b[0]) for b in dm.test_dataloader()) == 180
    audit = torch.cat([b[2] for b in dm.audit_dataloader()])
    assert torch.equal(audit, torch.arange(n))
    # a second data module (another rank, a later process) reads the same plan back
    dm2 = MembershipDataModule(num_references=2, model_index=0, run_dir=str(tmp_path))
    dm2.setup("fit")
    assert torch.equal(dm2.membership, dm.membership)
    x, y, i = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"dataset": "svhn"}, "data.dataset"),
        ({"num_references": 3}, "data.num_references"),
        ({"num_references": 2, "model_index": 3}, "data.model_index"),
        ({"model_index": -1}, "data.model_index"),
        ({"batch_size": 0}, "data.batch_size"),
    ],
)
def test_datamodule_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        MembershipDataModule(**kwargs)


@pytest.mark.parametrize("audit_size", [0, 3, 4, 49])
def test_an_audit_too_small_for_its_interval_is_refused_naming_the_minimum(audit_size):
    with pytest.raises(ConfigError, match=rf"data.audit_size={audit_size} is not allowed; expected null or an integer "
                                          r"in \[50, 1617\]: below 50 audit samples, the AUC's 95% interval of an "
                                          r"attack with no signal wrongly rules out 0.5 .* see docs/limits.md"):
        make_plan(**{**SETTINGS, "audit_size": audit_size})
    plan = make_plan(**{**SETTINGS, "audit_size": 50})  # the minimum itself is allowed
    assert plan.membership.shape == (7, 50) and plan.membership.sum(1).tolist() == [25] * 7


@pytest.mark.parametrize("population, shown", [(99, "data.population=99 is below"),
                                                (0.05, "data.population=0.05 gives 90 samples, which is below")])
def test_a_population_too_small_for_the_test_accuracy_is_refused_naming_the_minimum(population, shown):
    with pytest.raises(ConfigError, match=rf"{shown} the minimum of 100: the target's test accuracy is measured on it,"
                                          r" .* see docs/limits.md"):
        make_plan(**{**SETTINGS, "population": population})
    assert make_plan(**{**SETTINGS, "population": 100}).population_indices.numel() == 100  # the minimum itself


def test_a_pool_too_small_for_an_audit_is_refused():
    with pytest.raises(ConfigError, match=r"the pool of 149 samples is too small to audit: it needs at least 150, a "
                                          r"population of 100 .* and an audit set of 50"):
        make_plan(dataset="tiny", pool_size=149, num_references=2, seed=0)
    plan = make_plan(dataset="tiny", pool_size=150, num_references=2, seed=0)  # the default population: 100
    assert plan.population_indices.numel() == 100 and plan.membership.shape == (3, 50)
    with pytest.raises(ConfigError, match=r"the pool of 200 samples leaves 49 for the audit after the population of "
                                          r"151 \(data.population=151\), below the minimum of 50; use a smaller "
                                          r"data.population or more data \(at least 150 samples\): below 50 audit"):
        make_plan(dataset="tiny", pool_size=200, num_references=2, seed=0, population=151)
    plan = make_plan(dataset="tiny", pool_size=200, num_references=2, seed=0, population=150)
    assert plan.membership.shape == (3, 50)


def _fit_refused(tmp_path, *flags):
    """`run.py fit` as a user runs it, in its own process: (exit code, stderr lines, run_dir)."""
    rd = tmp_path / "run"
    proc = subprocess.run([sys.executable, "run.py", "fit", "--run_dir", str(rd), *flags], capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stderr.strip().splitlines(), rd


@pytest.mark.parametrize("flag, value, key", [
    ("--data.audit_size", "49", "data.audit_size=49 is not allowed; expected an integer in [50, inf] or null (the rest "
                                "of the pool): below 50 audit samples"),
    ("--data.population", "99", "data.population=99 is below the minimum of 100: the target's test accuracy is measured on it"),
])
def test_too_small_sizes_are_one_line_exit_2_from_run_py_fit_writing_nothing(tmp_path, flag, value, key):
    code, err, rd = _fit_refused(tmp_path, flag, value, "--trainer.max_epochs", "1")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and key in err[0], err
    assert "docs/limits.md" in err[0] and "Traceback" not in err[0]
    assert not rd.exists()  # no plan, no model folder, not even the run directory


@pytest.mark.parametrize("flag, value, key", [("--data.audit_size", "3", "data.audit_size=3"),
                                              ("--data.population", "1795", "leaves 2 for the audit")])
def test_too_small_sizes_are_one_line_exit_2_before_anything_is_written(tmp_path, capsys, flag, value, key):
    import run

    rd = tmp_path / "run"
    assert run.main(["fit", "--run_dir", str(rd), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], err
    assert "minimum of 50" in err[0] or "[50, " in err[0], err
    assert not (rd / "plan.json").exists() and not list(rd.glob("model_*"))


def test_a_fit_at_the_minimums_audits_them(tmp_path, capsys):
    import run

    rd = tmp_path / "run"
    assert run.main(["fit", "--run_dir", str(rd), "--data.audit_size", "50", "--data.population", "100",
                     "--data.num_references", "0", "--model.kind", "ann", "--model.width", "0.25",
                     "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                     "--trainer.enable_model_summary", "false"]) == 0
    settings = json.loads((rd / "audit" / "report.json").read_text())["settings"]
    assert settings["audit_samples"] == 50 and settings["population_samples"] == 100


@pytest.mark.parametrize("flags, key", [(["--data.audit_size", "49"], "data.audit_size=49"),
                                        (["--data.population", "99"], "data.population=99")])
def test_sizes_below_the_minimum_are_refused_by_the_parser_with_no_pool(flags, key, monkeypatch):
    """The checks that need no data run when the data module is built, so the parser that `run.py
    study` and `submit` run on every entry before training refuses them; no pool is loaded."""
    from datamodules import membership
    from training.cli import parse_config

    monkeypatch.setattr(membership, "load_pool", lambda *a, **k: pytest.fail("the pool was loaded"))
    with pytest.raises(ConfigError, match=rf"{key} is .*(\[50, inf\]|minimum of 100).* see docs/limits.md"):
        parse_config(flags)
    parse_config(["--data.audit_size", "50", "--data.population", "100"])  # the minimums themselves parse
