"""Per-model attack signals, computed once per (checkpoint, query strategy, latency)
and cached in the model's directory.

    model_<k>/signals/<strategy>__T<t>__seed<s>.pt    tensors only (weights_only load)
    model_<k>/signals/<strategy>__T<t>__seed<s>.json  checkpoint sha256, plan, sizes

A cache entry is used only when its JSON matches the checkpoint's content hash, the
plan's fingerprint, the strategy, the latency and the mask seed; anything else is
recomputed. Signals, not logits, are kept: the float32 rescaled logit phi and a bool `correct`,
per query and sample. The true-class probability is sigmoid(phi) (phi = log p -
log(1 - p)), recovered in float64 on load: storing p itself in float32 would round
every p > 1 - 6e-8 to 1.0 and tie the most confident samples. That is 9 MB per
model at N = 60,000, Q = 30, so a K = 64 study holds about 0.6 GB of attack inputs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import torch

from attacks import parse_query, query_signals
from datamodules.errors import ConfigError
from lightning_modules import Classifier

SPLITS = ("audit", "population")
STORED = ("rescaled_logit", "correct")
_SHA_MEMO: dict[tuple, str] = {}


def model_dir(run_dir: str | Path, index: int) -> Path:
    """run_dir/model_0 is the target, run_dir/model_k the k-th reference."""
    return Path(run_dir) / f"model_{index}"


def checkpoint_path(run_dir: str | Path, index: int) -> Path:
    return model_dir(run_dir, index) / "checkpoints" / "last.ckpt"


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def load_checkpoint(path: Path, plan_fingerprint: dict | None = None, index: int | None = None) -> tuple[Classifier, dict]:
    """A model from a Lightning checkpoint, read with weights_only=True (no arbitrary
    unpickling: reference pools are shared between users). Any failure is a ConfigError
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} is missing; train that model first (run.py fit --data.model_index {index})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"checkpoint {path} is corrupt or not loadable with weights_only=True ({_first_line(err)})") from None
    hp, state = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None, ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} has no hyper_parameters / state_dict: not a checkpoint of this tool")
    if plan_fingerprint is not None:
        saved = ckpt.get("MembershipDataModule", {})
        if saved.get("plan") != plan_fingerprint or (index is not None and saved.get("model_index") != index):
            raise ConfigError(
                f"checkpoint {path} was trained on plan {saved.get('plan')} as model {saved.get('model_index')}; "
                f"this run needs model {index} of plan {plan_fingerprint}"
            )
    allowed = set(inspect.signature(Classifier.__init__).parameters) - {"self"}
    try:
        model = Classifier(**{k: v for k, v in hp.items() if k in allowed})
        model.load_state_dict(state)
    except Exception as err:
        raise ConfigError(f"checkpoint {path} does not match its own hyper-parameters ({_first_line(err)})") from None
    return model.eval(), ckpt


def cache_key(strategy, T: int | None, seed: int) -> str:
    return f"{parse_query(strategy).name}__T{T if T is not None else 'ann'}__seed{seed}"


def compute_signals(model, datamodule, strategy, *, seed: int = 0, T: int | None = None, device=None,
                    progress: bool = False, audit_positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One pass over the audit set and one over the population, per query.
    Returns {"audit/probability": [Q, N], ..., "population/correct": [Q, Z]}."""
    if T is not None and getattr(model, "T", None) is not None:
        model.T = T
    out = {}
    loaders = {"audit": datamodule.audit_dataloader(audit_positions), "population": datamodule.population_dataloader()}
    for split, loader in loaders.items():
        sig = query_signals(model, loader, strategy, seed=seed, num_samples=len(loader.dataset), device=device,
                            progress=progress)
        out[f"{split}/rescaled_logit"] = sig["rescaled_logit"].float()
        out[f"{split}/correct"] = sig["correct"]
    return with_probability(out)


def with_probability(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add "<split>/probability" = sigmoid(rescaled logit), float64."""
    out = {k: v for k, v in tensors.items() if not k.endswith("/probability")}
    for split in SPLITS:
        out[f"{split}/probability"] = torch.sigmoid(out[f"{split}/rescaled_logit"].double())
    return out


def stored(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.split("/")[-1] in STORED}


def cached_signals(run_dir: str | Path, index: int, datamodule, strategy, *, seed: int = 0, T: int | None = None,
                   device=None, progress: bool = False, stats: dict | None = None) -> dict[str, torch.Tensor]:
    """Signals of the finished model `index` for `strategy` at latency T (None: as
    trained), from the cache when it is valid, else computed and cached."""
    ckpt = checkpoint_path(run_dir, index)
    fingerprint = datamodule.plan.fingerprint
    sha = file_sha256(ckpt) if ckpt.is_file() else None
    strategy = parse_query(strategy)
    directory = model_dir(run_dir, index) / "signals"
    done = read_done(run_dir, index)
    # The latency is part of the key: an ANN has none, an SNN runs at T (None: as trained).
    T = None if done.get("kind") == "ann" else (done.get("T") if T is None else T)
    key = cache_key(strategy, T, seed)
    data_path, meta_path = directory / f"{key}.pt", directory / f"{key}.json"
    meta = {"checkpoint_sha256": sha, "plan": fingerprint, "strategy": strategy.name, "T": T, "seed": seed,
            "audit_size": int(datamodule.membership.shape[1]), "population_size": int(len(datamodule.population_indices))}
    if meta_path.is_file() and data_path.is_file():
        try:
            same = json.loads(meta_path.read_text()) == meta
        except Exception:
            same = False
        if same:
            try:
                tensors = torch.load(data_path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise ConfigError(f"signal cache {data_path} is corrupt ({_first_line(err)}); delete it to recompute") from None
            if stats is not None:
                stats["hits"] = stats.get("hits", 0) + 1
            return with_probability(tensors)
    model, _ = load_checkpoint(ckpt, fingerprint, index)
    tensors = compute_signals(model, datamodule, strategy, seed=seed, T=T, device=device, progress=progress)
    atomic_write(data_path, lambda p: torch.save(stored(tensors), p))
    write_json(meta_path, meta)  # written last: its presence marks a complete entry
    if stats is not None:
        stats["misses"] = stats.get("misses", 0) + 1
    return tensors


def read_done(run_dir: str | Path, index: int) -> dict:
    path = model_dir(run_dir, index) / "done.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model {index} has not finished training ({path} is missing); "
                          f"run.py fit --data.model_index {index}") from None
    except Exception as err:
        raise ConfigError(f"{path} is corrupt ({_first_line(err)}); delete it and rerun run.py fit") from None


def finished_models(run_dir: str | Path, indices) -> list[int]:
    """The models among `indices` whose training finished (model_<k>/done.json)."""
    return [k for k in indices if (model_dir(run_dir, k) / "done.json").is_file()]


def subset(tensors: dict[str, torch.Tensor], positions: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Restrict the audit part of cached signals to `positions`."""
    if positions is None:
        return tensors
    return {k: (v[:, positions] if k.startswith("audit/") else v) for k, v in tensors.items()}
