"""A full disk: the run directory on a small tmpfs, filled so that a write of `fit` fails with
ENOSPC part-way. The process ends with one line (no traceback), nothing is left half-written
(no temporary file, every JSON parses), and after space is freed a rerun finishes with the
report an uninterrupted run writes. Needs root to mount a tmpfs; skipped otherwise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import run
from test_integrity import QUIET, SMALL

ROOT = Path(run.__file__).resolve().parent
ARGS = ["run.py", "fit", *QUIET, *SMALL, "--trainer.max_epochs", "2"]
MB = 1 << 20


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNN_MIA_KILL", "SNN_MIA_PAUSE"))}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}


def _fit(rd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *ARGS, "--run_dir", str(rd)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    rd = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = _fit(rd)
    assert done.returncode == 0, done.stderr[-2000:]
    size = sum(p.stat().st_size for p in rd.rglob("*") if p.is_file())
    return (rd / "audit" / "report.json").read_bytes(), size


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int) -> Path:
    """A filler file that leaves `leave` bytes free on the file system."""
    filler = mnt / "filler"
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * MB
        remaining = free - leave
        while remaining > 0:
            f.write(chunk[: min(MB, remaining)])
            remaining -= MB
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.3, 0.8])
def test_a_full_disk_is_one_line_leaves_nothing_half_written_and_a_rerun_finishes(small_disk, uninterrupted, fraction):
    report, run_size = uninterrupted
    filler = fill(small_disk, int(run_size * fraction))  # the run needs more than is left
    rd = small_disk / "run"
    stopped = _fit(rd)
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left") and "rerun the same command to resume" in last, last
    files = [p for p in rd.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp" in p.name], files  # no temporary file stays
    for p in files:
        if p.suffix == ".json":
            json.loads(p.read_text())  # every JSON whole
    assert not (rd / "audit" / "report.json").exists() or (rd / "audit" / "report.json").read_bytes() == report
    filler.unlink()  # space freed
    again = _fit(rd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (rd / "audit" / "report.json").read_bytes() == report
