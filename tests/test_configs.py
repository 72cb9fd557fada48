"""Every config a user can pass, loaded by what reads it. The folder says what a file
configures (no file-name trick): configs/*.yaml, configs/paper/ and configs/trainer/ are
run.py configs, configs/study/ study files, configs/slurm/ `run.py submit` options;
examples/*.yaml are run.py configs of networks of your own."""

from pathlib import Path

import pytest
import yaml

from cluster.slurm import SlurmOptions, options_from, parser as submit_parser
from study import load_study
from training.cli import ROOT, cli_main, parse_config
from writers import write_image_folder

CONFIGS = ROOT / "configs"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KINDS = {".": "run", "paper": "run", "trainer": "run", "study": "study", "slurm": "slurm"}


def configs(kind: str) -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*") if p.is_file()
                  and KINDS.get(p.parent.relative_to(CONFIGS).as_posix()) == kind)


def ids(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def test_every_file_under_configs_is_a_yaml_file_of_a_known_kind():
    for p in CONFIGS.rglob("*"):
        if p.is_file():
            assert p.suffix == ".yaml", p
            assert p.parent.relative_to(CONFIGS).as_posix() in KINDS, f"{p}: a folder no test loads"
    assert configs("run") and configs("study") and configs("slurm")


def test_every_config_begins_with_the_command_that_runs_it():
    assert EXAMPLES
    for p in [*CONFIGS.rglob("*.yaml"), *EXAMPLES]:
        first = p.read_text().splitlines()[0]
        assert first.startswith("# ") and "python run.py" in first, f"{p}: {first!r}"


@pytest.mark.parametrize("config", configs("run"), ids=ids)
def test_every_run_config_parses_and_instantiates(tmp_path, config):
    args = ["--config", str(config), "--run_dir", str(tmp_path), "--trainer.accelerator", "cpu"]
    if (yaml.safe_load(config.read_text()).get("data") or {}).get("dataset") == "imagefolder":
        # the data module lists the class folders when it is built: give it a small folder
        write_image_folder(tmp_path / "images", {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
        args += ["--data.root", str(tmp_path / "images")]
    cli = cli_main(args, run=False)
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    assert tuple(cli.model.hparams.input_shape) == tuple(cli.datamodule.input_shape)


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: f"examples/{p.name}")
def test_every_example_config_parses_and_builds_its_network(tmp_path, config):
    if "snntorch" in config.read_text():
        pytest.importorskip("snntorch", reason="snntorch is an optional extra (pip install -e '.[snntorch]')")
    cli = cli_main(["--config", str(config), "--run_dir", str(tmp_path), "--trainer.accelerator", "cpu"], run=False)
    spec = cli.model.hparams.net
    assert spec["class_path"].startswith("examples.")
    assert type(cli.model.net).__name__ == spec["class_path"].rsplit(".", 1)[1]
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes


@pytest.mark.parametrize("config", configs("study"), ids=ids)
def test_every_study_config_and_each_of_its_entries_parse(tmp_path, config):
    from study.runner import entry_argv

    spec = load_study(config, run_dir=str(tmp_path))
    assert spec["entries"]
    for seed in spec["seeds"] or [None]:
        for e in spec["entries"]:  # each entry's flags for each seed, as `run.py fit` parses and checks them
            argv = entry_argv(spec, e, seed)
            assert all("${run_dir}" not in a for a in argv)
            cfg = parse_config([*argv, "--trainer.accelerator", "cpu"])
            assert cfg["run_dir"] == argv[-1] and (seed is None or cfg["data"]["seed"] == seed)


@pytest.mark.parametrize("config", configs("slurm"), ids=ids)
def test_every_slurm_config_gives_valid_options(config):
    flags = submit_parser().parse_args(["--slurm_config", str(config)])
    assert isinstance(options_from(flags), SlurmOptions)

