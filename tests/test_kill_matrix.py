"""The kill matrix (tests/kill_matrix.py): SIGKILL at six moments of `run.py fit`, rerun,
and the report equals an uninterrupted run's byte for byte. About 100 s on 2 cores."""

import pytest

from kill_matrix import main


@pytest.mark.slow
def test_kill_anywhere_rerun_gives_the_uninterrupted_report(capsys):
    assert main([]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("during", "after"))]
    assert len(rows) == 6 and all(line.endswith("  identical") for line in rows), out
    assert "all identical" in out
