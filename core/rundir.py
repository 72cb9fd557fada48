"""The run directory on disk: its layout, atomic writes, content hashes, the
checkpoint reader and the per-model `done.json` record. Nothing else opens a
checkpoint or decides where a file of the run directory lives.

    run_dir/
      plan.json, plan.pt            the membership plan (datamodules/plan.py)
      model_<k>/                    model k: 0 is the target, 1..K the references
        checkpoints/last.ckpt       Lightning checkpoint, replaced atomically at every epoch end
        checkpoints/last.ckpt.sha256  its hash (and the previous one's), checked when it is read
        hpc_ckpt_*.ckpt             Lightning's SLURM requeue checkpoint (mid-epoch), removed when done
        done.json                   written once training finished and all the model owes exists
        .lock                       held (fcntl.flock) by the one process that trains this model
        signals/<key>.{pt,json}     cached attack signals (audit/cache.py)
        logs/                       CSV logs; wandb/ for W&B
      audit/                        report.json, report.md, roc.png (audit/report.py)
      replaced/model_<k>.<time>/    a model folder that `fit --retrain true` moved aside (never deleted)

The layout is a public contract: docs/design.md, "Run directory".
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path

from .errors import ConfigError, first_line
from .faults import kill_point

# The most references a run may have (model_1 .. model_K). Each is a model to train, and LiRA's
# and RMIA's papers use at most 256: a larger K is a typo, and the plan's K x N membership
# matrix would not fit in memory.
MAX_REFERENCES = 1024


def check_num_references(k) -> None:
    """K: an even integer (references come in complementary pairs) in [0, MAX_REFERENCES]."""
    if not (isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= MAX_REFERENCES and k % 2 == 0):
        raise ConfigError(f"data.num_references={k!r} is not allowed; expected an even integer in "
                          f"[0, {MAX_REFERENCES}] (each reference is a model to train; LiRA and RMIA use at most 256)")

_SHA_MEMO: dict[tuple, str] = {}


# -- layout -----------------------------------------------------------------------------------
def model_dir(run_dir: str | Path, index: int) -> Path:
    """run_dir/model_0 is the target, run_dir/model_k the k-th reference."""
    return Path(run_dir) / f"model_{index}"


def checkpoint_path(run_dir: str | Path, index: int) -> Path:
    """The checkpoint that resume, the signal cache and the audit rely on."""
    return model_dir(run_dir, index) / "checkpoints" / "last.ckpt"


def done_path(run_dir: str | Path, index: int) -> Path:
    return model_dir(run_dir, index) / "done.json"


def signals_dir(run_dir: str | Path, index: int) -> Path:
    return model_dir(run_dir, index) / "signals"


def audit_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "audit"


def plan_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """(plan.json, plan.pt): the membership plan's record (written last: it marks a complete
    plan) and its tensors."""
    return Path(run_dir) / "plan.json", Path(run_dir) / "plan.pt"


def report_paths(run_dir: str | Path) -> dict[str, Path]:
    """The target's report set in run_dir/audit/: what a finished target owes."""
    out = audit_dir(run_dir)
    return {"json": out / "report.json", "md": out / "report.md", "roc": out / "roc.png"}


def trajectory_dir(run_dir: str | Path, index: int) -> Path:
    """Model `index`'s rescaled logits at each audited epoch (audit/trajectory.py)."""
    return model_dir(run_dir, index) / "trajectory"


def trained_model_dirs(run_dir: str | Path) -> list[Path]:
    """The model folders of run_dir that hold a checkpoints folder (something was trained)."""
    return sorted(p.parent for p in Path(run_dir).glob("model_*/checkpoints"))


def study_dir(run_dir: str | Path) -> Path:
    """A study's combined report (run.py study)."""
    return Path(run_dir) / "study"


def slurm_dir(run_dir: str | Path) -> Path:
    """SLURM scripts and job logs of run.py submit."""
    return Path(run_dir) / "slurm"


def requeue_checkpoints(run_dir: str | Path, index: int) -> list[Path]:
    """Lightning's SLURM requeue checkpoints of model `index` (hpc_ckpt_<n>.ckpt)."""
    return sorted(model_dir(run_dir, index).glob("hpc_ckpt_*.ckpt"))


# -- writing ----------------------------------------------------------------------------------
def atomic_write(path: Path, write) -> None:
    """`write(tmp)` to a temporary name next to `path`, then rename: readers see the old
    file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _write_tmp(path, tmp, write)
        kill_point(f"write:{path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_tmp(path: Path, tmp: Path, write) -> None:
    """`write(tmp)`; a failure on a full disk (torch.save says only "unexpected pos" or "file
    write failed") becomes OSError(ENOSPC) naming `path`, the file that could not be written."""
    try:
        write(tmp)
    except Exception as err:
        if disk_full(err) or _no_space(path.parent):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
        raise


def _no_space(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def write_json(path: Path, obj, indent: int = 2) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=indent) + "\n"))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (memoised per path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def tensors_sha256(tensors: dict) -> str:
    """SHA-256 of named tensors' contents (name, dtype, shape and bytes, in name order): the
    same for the same values whatever file format or process wrote them."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())  # bool, integer and float32/64 tensors: what plans and caches hold
    return h.hexdigest()


# -- one writer per model ---------------------------------------------------------------------
class _FileLock:
    """An fcntl.flock on a file: the operating system releases it when the process dies,
    whatever the way (kill -9 included); the file staying behind means nothing."""

    blocking = True

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def _busy(self, fd: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            try:
                self._busy(fd)
            finally:
                os.close(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class ModelLock(_FileLock):
    """An exclusive lock on model_<k>/ for the process that trains it (model_<k>/.lock). The
    file holds the holder's host and PID, for the one-line error a second process gets."""

    blocking = False

    def __init__(self, run_dir: str | Path, index: int):
        super().__init__(model_dir(run_dir, index) / ".lock")
        self.index = index

    def _busy(self, fd: int) -> None:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        raise ConfigError(f"model_{self.index} in {self.path.parent.parent} is being trained by {holder}; "
                          "wait for it to finish, or stop it (one process per model)") from None

    def __enter__(self) -> "ModelLock":
        super().__enter__()
        os.ftruncate(self._fd, 0)
        try:
            os.pwrite(self._fd, f"host {socket.gethostname()}, pid {os.getpid()}, since "
                                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except OSError as err:  # a full disk: the error names the file (os.pwrite names none)
            self.__exit__()
            raise OSError(err.errno, err.strerror, str(self.path)) from err
        return self


class PlanLock(_FileLock):
    """Serialises drawing or checking the membership plan of one run directory between
    processes (a SLURM array's tasks start together): a blocking lock on run_dir/.plan.lock."""

    def __init__(self, run_dir: str | Path):
        super().__init__(Path(run_dir) / ".plan.lock")


class ReportLock(_FileLock):
    """Serialises writing one report folder (audit/ or a --report_dir) between processes: a
    blocking lock on <folder>/.report.lock held while report.json, report.md and the plots
    are written, so two audits of one model never leave a folder whose files come from
    different runs (each file is atomic on its own; the set is atomic under this lock)."""

    def __init__(self, folder: str | Path):
        super().__init__(Path(folder) / ".report.lock")


# -- checkpoints ------------------------------------------------------------------------------
def sidecar(path: Path) -> Path:
    return Path(str(path) + ".sha256")


def write_checkpoint_file(path: str | Path, write) -> None:
    """Write a checkpoint atomically (`write(tmp)`, then rename) and record its hash next to it.
    The sidecar is written before the rename and keeps the previous file's hash too, so a kill
    between the two renames leaves a checkpoint that still verifies (the old one or the new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _write_tmp(path, tmp, write)
        new = file_sha256(tmp)
        previous = file_sha256(path) if path.is_file() else None
        write_json(sidecar(path), {"sha256": new, "previous": previous})
        kill_point(f"write:{path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def verify_checkpoint(path: str | Path, label: str | None = None, expected: str | None = None,
                      hint: str = "restore it, or delete the model's folder to retrain it") -> None:
    """A checkpoint's bytes against the hash recorded when it was written (its .sha256 sidecar)
    and, for a finished model, against done.json's (`expected`). A file without a sidecar was
    not written by this tool's trainer (a --ckpt_path or init_from of the user's): only
    `expected` applies. A mismatch is a one-line ConfigError naming the file."""
    path = Path(path)
    label = label or f"checkpoint {path}"
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise ConfigError(f"{label} does not match the hash recorded when its model finished ({expected[:12]}..., "
                          f"file has {actual[:12]}...): it was changed or replaced; {hint}")
    side = sidecar(path)
    if not side.is_file():
        return
    try:
        recorded = json.loads(side.read_text())
        allowed = {recorded.get("sha256"), recorded.get("previous")} - {None}
    except Exception as err:
        raise ConfigError(f"{side} is corrupt ({first_line(err)}); restore it or delete the model's folder") from None
    if actual not in allowed:
        raise ConfigError(f"{label} does not match the hash recorded when it was written ({side}): it was changed, "
                          f"truncated or replaced; {hint}")


def check_trained_on(saved: dict | None, plan_fingerprint: dict, index: int | None, label: str,
                     hint: str = "use a new --run_dir or the original settings") -> None:
    """The one check that a model was trained on this plan as model `index`: `saved` is what
    MembershipDataModule.state_dict() put in its checkpoint ({"plan": ..., "model_index": ...})."""
    saved = saved if isinstance(saved, dict) else {}
    if saved.get("plan") != dict(plan_fingerprint) or (index is not None and saved.get("model_index") != index):
        raise ConfigError(f"{label} was trained on plan {saved.get('plan')} as model {saved.get('model_index')}; "
                          f"this run needs model {index} of plan {dict(plan_fingerprint)}: {hint}")


def read_checkpoint(path: str | Path, plan=None, index: int | None = None, *, label: str | None = None,
                    hint: str | None = None, expected_sha256: str | None = None) -> tuple[dict, dict, dict]:
    """(hyper-parameters, state_dict, the whole checkpoint) of a Lightning checkpoint written
    by this tool, read with torch.load(weights_only=True): a shared reference pool must not
    be able to run code. Its bytes are checked against the hash recorded when it was written
    (and `expected_sha256`, done.json's). With `plan` (a Plan or its fingerprint dict) it must
    have been trained on that plan, as model `index` when given. Every failure is one
    ConfigError naming the file (`label`, default "checkpoint <path>") and what to do (`hint`)."""
    import torch

    path = Path(path)
    label = label or f"checkpoint {path}"
    if not path.is_file():
        todo = hint or (f"train that model first (run.py fit --data.model_index {index})" if index is not None
                        else "give the path of a checkpoint written by run.py fit")
        raise ConfigError(f"{label} is missing (no such file); {todo}")
    verify_checkpoint(path, label, expected_sha256, **({"hint": hint} if hint else {}))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"{label} is corrupt or not loadable with weights_only=True ({first_line(err)}); "
                          f"{hint or 'delete it and train that model again'}") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise ConfigError(f"{label} has no hyper_parameters / state_dict: not a checkpoint of this tool"
                          + (f"; {hint}" if hint else ""))
    if plan is not None:
        fingerprint = plan.fingerprint if hasattr(plan, "fingerprint") else plan
        check_trained_on(ckpt.get("MembershipDataModule"), fingerprint, index, label,
                         hint or "use the run directory it belongs to, or retrain it")
    return hparams, state, ckpt


# -- done.json --------------------------------------------------------------------------------
def write_done(run_dir: str | Path, index: int, record: dict) -> None:
    """Mark model `index` finished. `record` holds what later steps read: the checkpoint's
    hash, the epochs, the model's hyper-parameters and the facts of how it was made
    (init, references overrides), so no later step has to re-read the flags."""
    write_json(done_path(run_dir, index), record)


def read_done(run_dir: str | Path, index: int) -> dict:
    path = done_path(run_dir, index)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model {index} has not finished training ({path} is missing); "
                          f"run.py fit --data.model_index {index}") from None
    except Exception as err:
        raise ConfigError(f"{path} is corrupt ({first_line(err)}); delete it and rerun run.py fit") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} is corrupt (not a JSON object); delete it and rerun run.py fit")
    return record


def finished_models(run_dir: str | Path, indices) -> list[int]:
    """The models among `indices` whose training finished (model_<k>/done.json exists)."""
    return [k for k in indices if done_path(run_dir, k).is_file()]


# -- re-verifying a finished model --------------------------------------------------------------
def retrain_command(index: int) -> str:
    """The command that really retrains model `index` (it moves the old folder aside first)."""
    return f"run.py fit --data.model_index {index} --retrain true"


def check_model_folder(run_dir: str | Path, index: int, done: dict, plan_fingerprint: dict | None = None) -> None:
    """model_<index>/ holds model `index` of this plan: its done.json (which records the hash of
    the checkpoint it finished with) says so. Folders swapped or moved by hand are refused in
    one line naming both folders, before any of their files (checkpoint, signal caches) is used."""
    recorded = done.get("model_index")
    folder = model_dir(run_dir, index)
    if recorded != index:
        other = f"model_{recorded}/" if isinstance(recorded, int) else "another folder"
        raise ConfigError(f"{folder}/ holds the files of model {recorded!r} (its done.json, checkpoint and signal "
                          f"caches were made as model {recorded!r}): model folders were swapped or moved; put "
                          f"model_{index}/ and {other} back where they belong (each model_<k>/ must hold model k)")
    if plan_fingerprint is not None and done.get("plan") is not None and done["plan"] != dict(plan_fingerprint):
        raise ConfigError(f"{folder}/ finished on plan {done['plan']}, not on this run directory's plan "
                          f"{dict(plan_fingerprint)}: it was copied from another run; restore this run's "
                          f"model_{index}/ or retrain it ({retrain_command(index)})")


def verify_finished(run_dir: str | Path, index: int, plan_fingerprint: dict | None = None) -> dict:
    """done.json of a finished model, re-verified: it is model `index` of this plan, and its
    checkpoint exists and matches the hash recorded when it finished. Every failure is one
    ConfigError naming the file and the command that retrains the model."""
    done = read_done(run_dir, index)
    check_model_folder(run_dir, index, done, plan_fingerprint)
    ckpt = checkpoint_path(run_dir, index)
    todo = f"restore it, or retrain that model with `{retrain_command(index)}` (the same config otherwise)"
    if not ckpt.is_file():
        raise ConfigError(f"model_{index} finished earlier but its checkpoint {ckpt} is missing; {todo}")
    verify_checkpoint(ckpt, f"checkpoint {ckpt} of the finished model_{index}", done.get("checkpoint_sha256"),
                      hint=todo)
    return done


def retire_model_folder(run_dir: str | Path, index: int) -> list[tuple[Path, Path]]:
    """`fit --retrain true`: move model_<index>/ (and, for the target, audit/, whose report it
    wrote) to run_dir/replaced/<name>.<UTC time>/, so the model trains from scratch and
    nothing of the old one is deleted. Returns the (old, new) paths moved."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for old in [model_dir(run_dir, index), *([audit_dir(run_dir)] if index == 0 else [])]:
        if not old.exists():
            continue
        new = Path(run_dir) / "replaced" / f"{old.name}.{stamp}"
        n = 1
        while new.exists():
            n += 1
            new = Path(run_dir) / "replaced" / f"{old.name}.{stamp}.{n}"
        new.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, new)
        moved.append((old, new))
    return moved


# -- the run directory itself ---------------------------------------------------------------------
def check_run_dir(run_dir: str) -> None:
    """--run_dir is a folder this process can create or write, checked before anything is
    written: not an existing file, no file on its path, not on a read-only file system, not
    a folder whose permissions refuse writing. A one-line ConfigError otherwise."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir={run_dir!r} is an existing file, not a folder; give a folder path "
                          "(it is made if missing)")
    probe = path
    while not probe.exists():  # the nearest existing folder on the path: the one that must be writable
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"run_dir={run_dir!r} cannot be made: {probe} on its path is a file, not a folder")
    # os.access asks the kernel as this user: it answers EROFS on a read-only mount even for root.
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(probe) else "no write permission"
        raise ConfigError(f"run_dir={run_dir!r} cannot be written ({why} at {probe}); give a folder you can write")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def damaged(path: str | Path) -> str | None:
    """Why a report file cannot be trusted (missing, empty, not parseable), or None when it is
    whole: report.json must be a JSON object, report.md UTF-8 text, a .png a complete image
    (Pillow's verify reads every chunk and its checksum, so a truncated file fails)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        data = path.read_bytes()
        if not data:
            return "empty"
        if path.suffix == ".json":
            if not isinstance(json.loads(data), dict):
                return "not a JSON object"
        elif path.suffix == ".md":
            data.decode("utf-8")
        elif path.suffix == ".png":
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                image.verify()
    except Exception as err:
        return f"unreadable ({first_line(err)})"
    return None


def disk_full_file(err: BaseException) -> str | None:
    """The file whose write met the full disk, when `err` (or what caused it) names one."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename:
            return str(err.filename)
        err = err.__cause__ or err.__context__
    return None


def disk_full(err: BaseException) -> bool:
    """Whether `err` (or what caused it) is a full disk or an exhausted quota."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "file write failed" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
