"""The run directory on disk: its layout, atomic writes, content hashes, the
checkpoint reader and the per-model `done.json` record. Nothing else opens a
checkpoint or decides where a file of the run directory lives.

    run_dir/
      plan.json, plan.pt            the membership plan (datamodules/plan.py)
      model_<k>/                    model k: 0 is the target, 1..K the references
        checkpoints/last.ckpt       Lightning checkpoint, overwritten at every epoch end
        hpc_ckpt_*.ckpt             Lightning's SLURM requeue checkpoint (mid-epoch)
        done.json                   written once training finished (see `write_done`)
        signals/<key>.{pt,json}     cached attack signals (audit/cache.py)
        logs/                       CSV logs; wandb/ for W&B
      audit/                        report.json, report.md, roc.png (audit/report.py)

The layout is a public contract: docs/design.md, "Run directory".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ConfigError, first_line

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
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


# -- checkpoints ------------------------------------------------------------------------------
def check_trained_on(saved: dict | None, plan_fingerprint: dict, index: int | None, label: str,
                     hint: str = "use a new --run_dir or the original settings") -> None:
    """The one check that a model was trained on this plan as model `index`: `saved` is what
    MembershipDataModule.state_dict() put in its checkpoint ({"plan": ..., "model_index": ...})."""
    saved = saved if isinstance(saved, dict) else {}
    if saved.get("plan") != dict(plan_fingerprint) or (index is not None and saved.get("model_index") != index):
        raise ConfigError(f"{label} was trained on plan {saved.get('plan')} as model {saved.get('model_index')}; "
                          f"this run needs model {index} of plan {dict(plan_fingerprint)}: {hint}")


def read_checkpoint(path: str | Path, plan=None, index: int | None = None, *, label: str | None = None,
                    hint: str | None = None) -> tuple[dict, dict, dict]:
    """(hyper-parameters, state_dict, the whole checkpoint) of a Lightning checkpoint written
    by this tool, read with torch.load(weights_only=True): a shared reference pool must not
    be able to run code. With `plan` (a Plan or its fingerprint dict) it must have been
    trained on that plan, as model `index` when given. Every failure is one ConfigError
    naming the file (`label`, default "checkpoint <path>") and what to do (`hint`)."""
    import torch

    path = Path(path)
    label = label or f"checkpoint {path}"
    if not path.is_file():
        todo = hint or (f"train that model first (run.py fit --data.model_index {index})" if index is not None
                        else "give the path of a checkpoint written by run.py fit")
        raise ConfigError(f"{label} is missing (no such file); {todo}")
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
