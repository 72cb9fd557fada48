"""One error family: every subcommand's errors reach run.py as a ToolError and end the same way."""

import subprocess
import sys

import pytest

import run
from cluster.slurm import SlurmError
from core.errors import ConfigError, RunFailure, ToolError
from study.runner import StudyError, StudyFailure


@pytest.mark.parametrize("cls,code", [(ConfigError, 2), (StudyError, 2), (SlurmError, 2), (RunFailure, 1),
                                      (StudyFailure, 1)])
def test_every_error_type_is_a_tool_error_with_its_exit_status(cls, code):
    assert issubclass(cls, ToolError) and cls.exit_code == code


@pytest.mark.parametrize("sub,module,func", [("study", "study.runner", "study_main"),
                                             ("submit", "cluster.slurm", "submit_main"),
                                             ("fit", "training.cli", "run_cli")])
@pytest.mark.parametrize("cls,code", [(StudyFailure, 1), (SlurmError, 2), (ConfigError, 2)])
def test_run_py_ends_any_tool_error_in_one_line(monkeypatch, capsys, sub, module, func, cls, code):
    def boom(argv):
        raise cls("what went wrong\nsecond line that must not be printed")

    monkeypatch.setattr(f"{module}.{func}", boom)
    assert run.main([sub]) == code
    err = capsys.readouterr().err
    assert err == "error: what went wrong\n"


def test_other_exceptions_are_not_swallowed(monkeypatch):
    def boom(argv):
        raise KeyError("a bug")

    monkeypatch.setattr("study.runner.study_main", boom)
    with pytest.raises(KeyError):
        run.main(["study"])


def test_a_bad_study_file_in_a_real_process(tmp_path):
    p = subprocess.run([sys.executable, "run.py", "study", "--config", str(tmp_path / "absent.yaml")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "absent.yaml" in lines[0]
