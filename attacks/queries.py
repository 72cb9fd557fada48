"""Query strategies: the Q inputs each audit sample is shown to every model.

A strategy is a small frozen dataclass with ``name`` (the report suffix, e.g.
``rmia_offline@dropout_p0.01_n10``), ``num_queries`` (Q) and
``apply(x, index, q, seed=0, T=None)``. Perturbations are a pure function of
(seed, sample index, query index[, time step]): no generator state, so every
model, batch size, batch order, device and process sees the same inputs.

Masks come from a counter-based hash on int64 tensors, vectorised over the
batch and the pixels (no per-sample Python loop): the 32-bit "lowbias32" mixer
(C. Wellons, hash-prospector, bias 0.17), with each 32 x 32-bit product split
in 16-bit halves so that no int64 product overflows (< 2^49): every step is
exact integer arithmetic, identical on CPU and GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: Tensor) -> Tensor:
    """lowbias32: a bijection on [0, 2^32) with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def dropout_uniforms(seed: int, index: Tensor, q: int, num_positions: int, T: int | None = None) -> Tensor:
    """Uniforms in [0, 1) (float64), [B, P] or [T, B, P] when T is given.

    u = h / 2^32 with h = mix(mix(mix(mix(key(seed) ^ index) ^ q) ^ t) ^ position):
    each step is a bijection, so different positions (or time steps, queries,
    indices) of one key never collide.
    """
    key = _mix32_int(_mix32_int(seed ^ 0x5EED0D0B) ^ (seed >> 32))
    h = _mix32((index.to(torch.int64) & _M32) ^ key)  # [B]
    h = _mix32(h ^ (q & _M32))
    if T is not None:
        t = torch.arange(T, dtype=torch.int64, device=index.device)
        h = _mix32(h.unsqueeze(0) ^ t.unsqueeze(1))  # [T, B]
    pos = torch.arange(num_positions, dtype=torch.int64, device=index.device)
    h = _mix32(h.unsqueeze(-1) ^ pos)  # [..., B, P]
    return h.to(torch.float64) * 2.0**-32


class QueryStrategy:
    """Base: subclasses set ``name``, ``num_queries`` and ``_apply``."""

    name: str
    num_queries: int

    def apply(self, x: Tensor, index: Tensor, q: int, seed: int = 0, T: int | None = None) -> Tensor:
        """Query ``q`` of the batch ``x`` [B, C, H, W] whose samples have indices ``index`` [B]."""
        if not (isinstance(q, int) and 0 <= q < self.num_queries):
            raise ValueError(f"q must be an int in [0, {self.num_queries - 1}] for {self.name!r}, got {q!r}")
        if x.ndim < 2:
            raise ValueError(f"x must be a batch [B, ...] with at least 2 dimensions, got shape {tuple(x.shape)}")
        index = torch.as_tensor(index)
        if index.shape != (x.shape[0],) or index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError(f"index must be an integer tensor of shape [{x.shape[0]}] (one per sample), "
                             f"got {index.dtype} of shape {tuple(index.shape)}")
        return self._apply(x, index, q, int(seed), T)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Plain(QueryStrategy):
    """The input as is (Q = 1)."""

    name = "plain"
    num_queries = 1

    def _apply(self, x, index, q, seed, T):
        return x


@dataclass(frozen=True)
class Flip(QueryStrategy):
    """q = 0: the input; q = 1: its horizontal mirror (last dimension reversed)."""

    name = "flip"
    num_queries = 2

    def _apply(self, x, index, q, seed, T):
        return x if q == 0 else torch.flip(x, dims=(-1,))


@dataclass(frozen=True)
class InputDropout(QueryStrategy):
    """Each pixel zeroed with probability ``p``; ``n`` masks (Q = n).

    One mask over the spatial positions (H x W), shared by all channels: a
    dropped pixel is dropped in R, G and B alike. A 2-D input [B, D] gets one
    mask over its D features. With ``per_timestep`` (SNNs), ``apply`` needs T
    and returns [T, B, C, H, W] with an independent mask per time step.
    """

    p: float
    n: int
    per_timestep: bool = False

    def __post_init__(self):
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p < 1:
            raise ValueError(f"p must be a number in [0, 1), got {self.p!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        if not isinstance(self.per_timestep, bool):
            raise ValueError(f"per_timestep must be True or False, got {self.per_timestep!r}")
        object.__setattr__(self, "p", float(self.p))

    @property
    def name(self) -> str:
        # repr: the shortest string that reads back as the same float, so names round-trip
        return f"dropout_p{self.p!r}_n{self.n}" + ("_pt" if self.per_timestep else "")

    @property
    def num_queries(self) -> int:
        return self.n

    def _apply(self, x, index, q, seed, T):
        if self.per_timestep and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
            raise ValueError(f"T must be an int >= 1 for per-time-step dropout ({self.name}), got {T!r}")
        T = T if self.per_timestep else None
        spatial = x.shape[2:] if x.ndim >= 3 else x.shape[1:]
        u = dropout_uniforms(seed, index.to(x.device), q, spatial.numel(), T)
        keep = (u >= self.p).to(x.dtype)
        if x.ndim >= 3:  # [.., B, 1, H, W]: shared across channels
            keep = keep.reshape(*keep.shape[:-1], 1, *spatial)
        else:
            keep = keep.reshape(*keep.shape[:-1], *spatial)
        return x * keep  # per time step: [T, B, ...] by broadcasting


plain = Plain()
flip = Flip()


def input_dropout(p: float, n: int, per_timestep: bool = False) -> InputDropout:
    """Strategy zeroing each pixel with probability p, n masks (see InputDropout)."""
    return InputDropout(p, n, per_timestep)


_ALLOWED = ('"plain", "flip", "dropout:p=<p>,n=<n>", "dropout:p=<p>,n=<n>,per_timestep=true", '
            'or a strategy name such as "dropout_p0.01_n10" / "dropout_p0.01_n10_pt"')
_NAME = re.compile(r"dropout_p(?P<p>[0-9.eE+-]+)_n(?P<n>\d+)(?P<pt>_pt)?")
_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_query(spec) -> QueryStrategy:
    """A strategy from its spec string (a QueryStrategy is returned as is).

    Accepts "plain", "flip", "dropout:p=0.01,n=10[,per_timestep=true]" and the
    ``name`` forms ("dropout_p0.01_n10[_pt]"), so ``parse_query(s.name) == s``.
    """
    if isinstance(spec, QueryStrategy):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"query spec must be a string, one of {_ALLOWED}; got {spec!r}")
    s = spec.strip().lower().replace(" ", "")
    if s in ("plain", "flip"):
        return plain if s == "plain" else flip
    try:
        if m := _NAME.fullmatch(s):
            return InputDropout(float(m["p"]), int(m["n"]), bool(m["pt"]))
        if s.startswith("dropout:"):
            fields = dict(kv.split("=", 1) for kv in s[len("dropout:"):].split(","))
            if not {"p", "n"} <= fields.keys() <= {"p", "n", "per_timestep"}:
                raise ValueError(f"dropout needs keys p and n (and optionally per_timestep), got {sorted(fields)}")
            return InputDropout(float(fields["p"]), int(fields["n"]), _BOOL[fields.get("per_timestep", "false")])
    except (ValueError, KeyError) as e:
        raise ValueError(f"bad query spec {spec!r} ({e}); allowed: {_ALLOWED}") from None
    raise ValueError(f"unknown query spec {spec!r}; allowed: {_ALLOWED}")
