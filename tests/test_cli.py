"""run.py through its argument list, as a user would type it."""

import pytest

import run


def test_fit_end_to_end_on_digits(tmp_path, fast_trainer_args, capsys):
    rd = tmp_path / "run"
    args = ["fit", "--run_dir", str(rd), "--trainer.max_epochs", "1", "--model.width", "0.5", *fast_trainer_args]
    assert run.main(args) == 0
    assert (rd / "plan.json").exists() and (rd / "plan.pt").exists()
    assert (rd / "model_0" / "checkpoints" / "last.ckpt").exists()
    header, *rows = (rd / "model_0" / "logs" / "metrics.csv").read_text().splitlines()
    assert {"train/acc", "val/acc", "val/loss"} <= set(header.split(",")) and rows
    # `test` finds the last checkpoint of the model by itself and reports population accuracy
    assert run.main(["test", "--run_dir", str(rd), "--model.width", "0.5", *fast_trainer_args]) == 0
    assert "test/acc" in capsys.readouterr().out


def test_reference_model_index_trains_into_its_own_directory(tmp_path, fast_trainer_args):
    rd = tmp_path / "run"
    args = ["fit", "--run_dir", str(rd), "--data.model_index", "3", "--data.num_references", "4",
            "--model.kind", "ann", "--trainer.max_epochs", "1", *fast_trainer_args]
    assert run.main(args) == 0
    assert (rd / "model_3" / "checkpoints" / "last.ckpt").exists()
    assert not (rd / "model_0").exists()


@pytest.mark.parametrize(
    "flags, key",
    [
        (["--data.dataset", "svhn"], "data.dataset='svhn'"),
        (["--model.arch", "lenet"], "model.arch='lenet'"),
        (["--model.neuron", "izh"], "model.neuron='izh'"),
        (["--model.surrogate", "relu"], "model.surrogate='relu'"),
        (["--model.T", "0"], "model.T=0"),
        (["--data.num_references", "3"], "data.num_references=3"),
        (["--data.num_references", "-2"], "data.num_references=-2"),
        (["--data.model_index", "5"], "data.model_index=5"),
        (["--data.batch_size", "0"], "data.batch_size=0"),
    ],
)
def test_bad_values_end_in_one_line_naming_the_key(tmp_path, capsys, flags, key):
    assert run.main(["fit", "--run_dir", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and key in err[-1] and "allowed" in err[-1]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, key", [
    (["--model.convert_v_init", "abc"], "model.convert_v_init"),
    (["--trainer.max_epochs", "x"], "trainer.max_epochs"),
    (["--model.bogus", "1"], "--model.bogus"),
    (["--config", "no_such_file.yaml"], "no_such_file.yaml"),
])
def test_parser_errors_are_one_line_too(tmp_path, capsys, flags, key):
    """Type errors, unknown keys and missing config files come from jsonargparse, not from
    ConfigError: they end in one line as well, not in its usage block."""
    with pytest.raises(SystemExit) as stop:
        run.main(["fit", "--run_dir", str(tmp_path / "r"), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], err
    assert not (tmp_path / "r").exists()


def test_missing_dataset_files(tmp_path, capsys, fast_trainer_args):
    args = ["fit", "--run_dir", str(tmp_path / "r"), "--data.dataset", "mnist", "--data.root", str(tmp_path / "none"),
            *fast_trainer_args]
    assert run.main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "MNIST/raw" in last and "--data.download true" in last


def test_run_dir_with_another_plan_is_refused_and_kept(tmp_path, capsys, fast_trainer_args):
    rd = tmp_path / "run"
    base = ["fit", "--run_dir", str(rd), "--trainer.max_epochs", "1", "--model.width", "0.25", *fast_trainer_args]
    assert run.main(base) == 0
    saved = {p: p.read_bytes() for p in rd.rglob("*") if p.is_file() and "logs" not in p.parts}
    assert run.main(base + ["--data.seed", "7"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "seed: plan has 0, config gives 7" in last
    assert {p: p.read_bytes() for p in saved} == saved


def test_help_lists_every_subcommand_with_one_line(capsys):
    assert run.main(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "audit", "study", "submit"):
        assert any(line.strip().startswith(sub + " ") for line in out.splitlines()), sub
    assert "predict" not in out
    assert run.main(["predict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predict" in err[0] and "study" in err[0]
    with pytest.raises(SystemExit) as stop:  # each subcommand's own flags
        run.main(["audit", "--help"])
    assert stop.value.code == 0 and "--queries" in capsys.readouterr().out
