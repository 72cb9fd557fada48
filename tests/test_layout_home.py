"""Run-directory paths are built in one place, core/rundir.py: a grep of the package finds the
layout's names nowhere else (a second builder would drift from the first)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attacks", "audit", "callbacks", "cluster", "core", "datamodules", "lightning_modules", "study",
            "training")
LAYOUT = re.compile(r'"plan\.json"|"plan\.pt"|"done\.json"|"last\.ckpt"|/ f?"model_|/ "audit"|/ "signals"|'
                    r'/ "trajectory"|/ "slurm"|/ "study"|glob\("model_')


def test_run_directory_paths_are_built_only_in_core_rundir():
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + [ROOT / "run.py"]
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files if p != ROOT / "core" / "rundir.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if LAYOUT.search(line)]
    assert not offenders, "build these paths with core/rundir.py's helpers:\n" + "\n".join(offenders)
    assert LAYOUT.search((ROOT / "core" / "rundir.py").read_text())  # the pattern itself still matches the layout
