"""A full disk: the run directory on a small tmpfs, filled so that a write of `fit` fails with
ENOSPC part-way: before the run (a checkpoint write fails), or while the run pauses inside one
write (core/faults.py), so that the next file, a signal-cache entry, the report, meets it. The process ends with one line (no traceback), nothing is left half-written
(no temporary file, every JSON parses), and after space is freed a rerun finishes with the
report an uninterrupted run writes. Needs root to mount a tmpfs; skipped otherwise."""

import errno
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
    assert f"writing {rd}/" in last, last  # names the file of the run directory that could not be written
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


def fill_up(mnt: Path) -> Path:
    """A filler file that takes every free byte left on the file system (written until ENOSPC)."""
    filler = mnt / "filler_all"
    chunk = b"\0" * MB
    with open(filler, "wb", buffering=0) as f:
        for size in (MB, 4096, 1):
            try:
                while True:
                    f.write(chunk[:size])
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
    return filler


def _fit_filling_at(rd: Path, pause_at: str, mnt: Path, log: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`fit` that pauses inside the atomic write matching `pause_at` (after its temporary file is
    written, before the rename: core/faults.py); the test then fills the disk, so that the NEXT
    file the run writes meets a full disk, as it would had the disk filled at that moment."""
    env = {**_env(), "SNN_MIA_PAUSE_AT": pause_at, "SNN_MIA_PAUSE_S": "5"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *ARGS, "--run_dir", str(rd)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.PIPE, text=True)
        lines, filler = [], None
        for line in proc.stderr:
            lines.append(line)
            if filler is None and line.startswith("pausing") and "SNN_MIA_PAUSE_AT" in line:
                filler = fill_up(mnt)
        proc.wait(timeout=600)
    assert filler is not None, "".join(lines)[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(lines)), filler


# (what the run writes just before, where the test fills the disk; the file that then meets the full disk)
FULL_AT = {
    "signal_cache_tensors": ("write:*/model_1/signals/plain__Tann__seed0.json", "model_2/signals/plain__Tann__seed0.pt"),
    "signal_cache_record": ("write:*/model_2/signals/plain__Tann__seed0.pt", "model_2/signals/plain__Tann__seed0.json"),
    "model_lock": ("write:*/model_2/done.json", "model_0/.lock"),
    "report": ("write:*/model_0/signals/plain__Tann__seed0.json", "audit/report.json"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FULL_AT))
def test_a_disk_that_fills_at_a_signal_cache_or_report_write_names_the_file(small_disk, uninterrupted, tmp_path,
                                                                               case):
    report, _ = uninterrupted
    pause_at, victim = FULL_AT[case]
    rd = small_disk / "run"
    stopped, filler = _fit_filling_at(rd, pause_at, small_disk, tmp_path / "stdout.txt")
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left") and "rerun the same command to resume" in last, last
    assert str(rd / victim) in last, last  # the line names the file that could not be written
    if victim.endswith(".lock"):  # the lock file holds the holder's name, for information only: it may stay empty
        assert (rd / victim).read_bytes() == b""
    else:
        assert not (rd / victim).exists()  # nothing of it, not a half of it
    files = [p for p in rd.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp" in p.name], files
    for p in files:
        if p.suffix == ".json":
            json.loads(p.read_text())
    for data in rd.glob("model_*/signals/*.pt"):  # no cache entry stays half-made: tensors without their record
        assert data.with_suffix(".json").exists(), data
    filler.unlink()
    again = _fit(rd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (rd / "audit" / "report.json").read_bytes() == report
