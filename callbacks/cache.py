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

Latencies: a direct-encoded SNN's entries for several latencies t are filled from one
run at T = max(t) read out after t steps (`cached_signals_by_latency`), each under its
own key. They equal a t-step run's to float rounding, not bit for bit: a batch of T
steps goes through the convolutions in a different shape than one of t steps.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from attacks import parse_query, query_signals, query_signals_by_latency
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


# -- DDP: each rank queries its shard, rank 0 gathers and merges ---------------------------
class Ranks:
    """The processes that share one audit: the ranks of a Lightning strategy (DDP), or
    this process alone (``Ranks()``). Collectives are no-ops for a single process."""

    def __init__(self, strategy=None):
        self.strategy = strategy
        self.world_size = int(getattr(strategy, "world_size", 1) or 1) if strategy is not None else 1
        self.rank = int(getattr(strategy, "global_rank", 0) or 0) if strategy is not None else 0
        if self.world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(f"world size {self.world_size} but no torch.distributed process group: "
                               "run the audit inside a Lightning entrypoint (fit, validate) so the ranks exist")

    @classmethod
    def of(cls, trainer) -> "Ranks":
        return cls(getattr(trainer, "strategy", None))

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        return self.strategy.broadcast(obj, src=0) if self.sharded else obj

    def barrier(self) -> None:
        if self.sharded:
            self.strategy.barrier()

    def gather(self, obj) -> list | None:
        """Every rank's `obj` in rank order, on rank 0; None on the others."""
        if not self.sharded:
            return [obj]
        out = [None] * self.world_size if self.is_zero else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """`loader` restricted to this rank's shard: DistributedSampler without shuffling, which
    pads the last shards by repeating samples from the start so that every rank has as many."""
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank, shuffle=False)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def pack_shard(signals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One rank's ``query_signals(..., allow_missing=True)`` result, cut down to the samples it
    saw: ``index`` [n] (their positions, ascending) and every signal's last dimension at those."""
    seen = signals["seen"]
    out = {"index": seen.nonzero().squeeze(1)}
    for key, value in signals.items():
        if key != "seen":
            out[key] = value[..., seen]
    return out


def merge_shards(shards: list[dict[str, torch.Tensor]], num_samples: int) -> dict[str, torch.Tensor]:
    """The full signals [..., num_samples] from the ranks' packed shards (`pack_shard`), in sample
    order, each sample taken exactly once: a sample that several ranks saw (DistributedSampler's
    padding repeats samples) is taken from the lowest rank. A sample no rank saw is an error."""
    if not shards:
        raise ValueError("no shards to merge")
    filled = torch.zeros(num_samples, dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        index = shard["index"].cpu().long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_samples):
            raise ValueError(f"shard holds sample indices outside [0, {num_samples - 1}]")
        new = ~filled[index]
        take, rows = index[new], new.nonzero().squeeze(1)
        for key, value in shard.items():
            if key == "index":
                continue
            value = value.cpu()
            if key not in out:
                fill = float("nan") if value.is_floating_point() else (False if value.dtype == torch.bool else -1)
                out[key] = torch.full((*value.shape[:-1], num_samples), fill, dtype=value.dtype)
            out[key][..., take] = value[..., rows]
        filled[take] = True
    if not bool(filled.all()):
        missing = (~filled).nonzero().squeeze(1)
        raise RuntimeError(f"{missing.numel()} of {num_samples} samples were queried by no rank "
                           f"(first: {missing[:5].tolist()})")
    return out


def query_split(model, loader: DataLoader, strategy, *, seed: int = 0, device=None, progress: bool = False,
                ranks: Ranks | None = None, keys=("rescaled_logit", "correct")) -> dict[str, torch.Tensor] | None:
    """``query_signals`` over the whole of ``loader.dataset`` (only `keys`): in one process, or
    sharded over `ranks` and merged on rank 0 (None on the other ranks)."""
    n = len(loader.dataset)
    if ranks is None or not ranks.sharded:
        sig = query_signals(model, loader, strategy, seed=seed, num_samples=n, device=device, progress=progress)
        return {k: sig[k] for k in keys}
    sig = query_signals(model, shard_loader(loader, ranks.rank, ranks.world_size), strategy, seed=seed,
                        num_samples=n, device=device, progress=progress and ranks.is_zero, allow_missing=True)
    shards = ranks.gather(pack_shard({**{k: sig[k] for k in keys}, "seen": sig["seen"]}))
    return merge_shards(shards, n) if ranks.is_zero else None


def compute_signals(model, datamodule, strategy, *, seed: int = 0, T: int | None = None, device=None,
                    progress: bool = False, audit_positions: torch.Tensor | None = None,
                    ranks: Ranks | None = None) -> dict[str, torch.Tensor] | None:
    """One pass over the audit set and one over the population, per query.
    Returns {"audit/probability": [Q, N], ..., "population/correct": [Q, Z]}; under DDP
    (`ranks` sharded) every rank must call it, and only rank 0 gets the signals (else None)."""
    if T is not None and getattr(model, "T", None) is not None:
        model.T = T
    out = {}
    loaders = {"audit": datamodule.audit_dataloader(audit_positions), "population": datamodule.population_dataloader()}
    for split, loader in loaders.items():
        sig = query_split(model, loader, strategy, seed=seed, device=device, progress=progress, ranks=ranks)
        if sig is None:
            continue
        out[f"{split}/rescaled_logit"] = sig["rescaled_logit"].float()
        out[f"{split}/correct"] = sig["correct"]
    if ranks is not None and not ranks.is_zero:
        return None
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
                   device=None, progress: bool = False, stats: dict | None = None,
                   ranks: Ranks | None = None) -> dict[str, torch.Tensor] | None:
    """Signals of the finished model `index` for `strategy` at latency T (None: as
    trained), from the cache when it is valid, else computed and cached.

    Under DDP every rank must call it: rank 0 decides whether the cache is valid and reads
    it; on a miss every rank queries its shard and rank 0 writes the entry, once and
    atomically. Rank 0 gets the signals, the other ranks None."""
    out = cached_signals_by_latency(run_dir, index, datamodule, strategy, [T], seed=seed, device=device,
                                    progress=progress, stats=stats, ranks=ranks)
    return None if out is None else out[T]


def one_pass_latencies(model) -> bool:
    """Whether the signals at several latencies t may come from one run at T = max(t), read
    out early: an SNN with direct encoding, whose steps are causal and whose input for t
    steps (the image, or per-time-step query masks, which depend on the step, not on T) is
    the prefix of its input for T steps; its state is reset in every forward_steps.

    Not with Poisson encoding: the spike trains come from a generator seeded per forward,
    and only a generator that fills a tensor in order makes the first t steps of a T-step
    draw those of a t-step draw. The CPU's does (checked here); CUDA's Philox assigns its
    numbers by thread layout, which depends on the tensor's size. A cache entry must not
    depend on the device or on which other latencies were asked for, so Poisson SNNs run
    once per latency."""
    return getattr(model, "T", None) is not None and getattr(model, "encoding", None) == "direct" \
        and callable(getattr(model, "forward_steps", None))


def query_split_by_latency(model, loader: DataLoader, strategy, latencies, *, seed: int = 0, device=None,
                           progress: bool = False, ranks: Ranks | None = None,
                           keys=("rescaled_logit", "correct")) -> dict[int, dict[str, torch.Tensor]] | None:
    """``query_signals_by_latency`` over the whole of ``loader.dataset`` (only `keys`), as
    ``query_split``: {t: signals}, in one process or sharded over `ranks` (one gather for
    every t) and merged on rank 0 (None on the other ranks)."""
    n = len(loader.dataset)
    if ranks is None or not ranks.sharded:
        sig = query_signals_by_latency(model, loader, strategy, latencies, seed=seed, num_samples=n, device=device,
                                       progress=progress)
        return {t: {k: s[k] for k in keys} for t, s in sig.items()}
    sig = query_signals_by_latency(model, shard_loader(loader, ranks.rank, ranks.world_size), strategy, latencies,
                                   seed=seed, num_samples=n, device=device, progress=progress and ranks.is_zero,
                                   allow_missing=True)
    shards = ranks.gather({t: pack_shard({**{k: s[k] for k in keys}, "seen": s["seen"]}) for t, s in sig.items()})
    return {t: merge_shards([shard[t] for shard in shards], n) for t in sig} if ranks.is_zero else None


def compute_signals_by_latency(model, datamodule, strategy, latencies, *, seed: int = 0, device=None,
                               progress: bool = False, audit_positions: torch.Tensor | None = None,
                               ranks: Ranks | None = None) -> dict[int, dict[str, torch.Tensor]] | None:
    """``compute_signals`` at every latency t in `latencies` from one pass over the audit set
    and one over the population, the SNN run at T = max(latencies) and read out after t
    steps (see `one_pass_latencies` for when that equals a t-step run). {t: signals} on
    rank 0, None on the other ranks; under DDP every rank must call it."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    loaders = {"audit": datamodule.audit_dataloader(audit_positions), "population": datamodule.population_dataloader()}
    for split, loader in loaders.items():
        sig = query_split_by_latency(model, loader, strategy, latencies, seed=seed, device=device, progress=progress,
                                     ranks=ranks)
        if sig is None:
            continue
        for t, s in sig.items():
            out.setdefault(t, {})[f"{split}/rescaled_logit"] = s["rescaled_logit"].float()
            out[t][f"{split}/correct"] = s["correct"]
    if ranks is not None and not ranks.is_zero:
        return None
    return {t: with_probability(tensors) for t, tensors in out.items()}


def cached_signals_by_latency(run_dir: str | Path, index: int, datamodule, strategy, latencies=(None,), *,
                              seed: int = 0, device=None, progress: bool = False, stats: dict | None = None,
                              ranks: Ranks | None = None) -> dict[int | None, dict[str, torch.Tensor]] | None:
    """`cached_signals` at several latencies: {latency: signals} for each of `latencies`
    (None: as trained; an ANN has no latency and gets its one entry under every key).

    Every latency keeps its own cache entry (``cache_key(strategy, t, seed)``), so a later
    request for one of them hits. The missing entries of a direct-encoded SNN are computed
    from ONE run at T = max(missing latencies), read out after each t steps
    (`compute_signals_by_latency`); a Poisson-encoded SNN, or a single missing entry, runs
    once per latency (`compute_signals`). Under DDP every rank must call it with the same
    arguments: rank 0 checks and reads the caches, every rank queries its shard of what is
    missing, rank 0 merges and writes. Rank 0 gets the signals, the other ranks None.
    `stats` counts one hit or miss per (model, latency) entry."""
    ranks = ranks or Ranks()
    ckpt = checkpoint_path(run_dir, index)
    fingerprint = datamodule.plan.fingerprint
    strategy = parse_query(strategy)
    directory = model_dir(run_dir, index) / "signals"
    done = read_done(run_dir, index)
    latencies = list(dict.fromkeys(latencies)) or [None]
    # The latency is part of the key: an ANN has none, an SNN runs at T (None: as trained).
    effective = {lat: None if done.get("kind") == "ann" else (done.get("T") if lat is None else lat) for lat in latencies}
    Ts = list(dict.fromkeys(effective.values()))
    paths = {T: (directory / f"{cache_key(strategy, T, seed)}.pt", directory / f"{cache_key(strategy, T, seed)}.json")
             for T in Ts}
    found: dict[int | None, dict[str, torch.Tensor]] = {}
    metas: dict[int | None, dict] = {}
    error = None
    if ranks.is_zero:
        sha = file_sha256(ckpt) if ckpt.is_file() else None
        for T in Ts:
            data_path, meta_path = paths[T]
            metas[T] = meta = {"checkpoint_sha256": sha, "plan": fingerprint, "strategy": strategy.name, "T": T,
                               "seed": seed, "audit_size": int(datamodule.membership.shape[1]),
                               "population_size": int(len(datamodule.population_indices))}
            if not (meta_path.is_file() and data_path.is_file()):
                continue
            try:
                same = json.loads(meta_path.read_text()) == meta
            except Exception:
                same = False
            if same:
                try:
                    found[T] = torch.load(data_path, map_location="cpu", weights_only=True)
                except Exception as err:
                    error = f"signal cache {data_path} is corrupt ({_first_line(err)}); delete it to recompute"
                    break
    # Rank 0's decision holds for every rank (a rank must not query alone, nor skip a query).
    hits, error = ranks.broadcast(([T for T in Ts if T in found], error))
    if error:
        raise ConfigError(error)
    if stats is not None and hits:
        stats["hits"] = stats.get("hits", 0) + len(hits)
    found = {T: with_probability(tensors) for T, tensors in found.items()}
    missing = [T for T in Ts if T not in hits]
    if missing:
        model, _ = load_checkpoint(ckpt, fingerprint, index)
        if len(missing) > 1 and one_pass_latencies(model):
            computed = compute_signals_by_latency(model, datamodule, strategy, missing, seed=seed, device=device,
                                                  progress=progress, ranks=ranks)
        else:
            computed = {T: compute_signals(model, datamodule, strategy, seed=seed, T=T, device=device,
                                           progress=progress, ranks=ranks) for T in missing}
        if ranks.is_zero:
            for T in missing:
                data_path, meta_path = paths[T]
                atomic_write(data_path, lambda p, t=computed[T]: torch.save(stored(t), p))
                write_json(meta_path, metas[T])  # written last: its presence marks a complete entry
            found.update(computed)
        if stats is not None:
            stats["misses"] = stats.get("misses", 0) + len(missing)
    if not ranks.is_zero:
        return None
    return {lat: found[T] for lat, T in effective.items()}


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


def subset(tensors: dict[str, torch.Tensor] | None, positions: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
    """Restrict the audit part of cached signals to `positions` (None, a non-zero DDP rank's share, stays None)."""
    if positions is None or tensors is None:
        return tensors
    return {k: (v[:, positions] if k.startswith("audit/") else v) for k, v in tensors.items()}
