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

Event data (frames of event counts [B, T, C, H, W]) have their own strategies,
``event_drop`` and ``event_jitter``: each event of a frame is one unit of its
count, and each event's fate is hashed from (seed, sample index, query index,
frame position, the event's ordinal in its count) the same way.
"""

from __future__ import annotations

import math
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
    """Base: subclasses set ``name``, ``num_queries`` and ``_apply``; ``acts_on`` says which
    inputs a strategy is for: "images", "events" (frames of event counts) or "any"."""

    name: str
    num_queries: int
    acts_on = "any"

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
    acts_on = "images"

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
        if x.ndim > 4:
            raise ValueError(f"{self.name} acts on images [B, C, H, W] or features [B, D], got shape "
                             f"{tuple(x.shape)}; for event frames [B, T, C, H, W] use event_drop or event_jitter")
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


# -- event data ---------------------------------------------------------------------------------
# Where the event strategies act: on the frames the model is given, not on the raw events
# before they are integrated. Every strategy here is a function of the model input, applied
# in the attacks' batch loop to any model, and cached by name; a strategy on raw events would
# have to run inside the dataset, once per query, and would tie the attacks to the data
# loader. Frames lose nothing needed: a frame holds integer counts, one unit per event, so
# dropping each unit with probability p is exactly dropping each raw event independently
# (binomial thinning), with the frame boundaries kept where the plain sample has them; and
# moving a unit to a neighbouring frame is jittering that event's time at the resolution
# of the frames.

# Events expanded at once: a few int64 tensors of 32 MB each. The expansion costs about
# 0.1 us per event on this CPU: 97 ms for a batch of 256 N-MNIST-sized samples (1.0 M
# events), 4% of the SNN CNN's forward pass on the same batch (2.2 s at T = 8).
_MAX_EVENTS = 1 << 22


def event_uniforms(seed: int, salt: int, index: Tensor, q: int, position: Tensor, ordinal: Tensor) -> Tensor:
    """Uniforms in [0, 1) (float64), one per event: h / 2^32 with
    h = mix(mix(mix(mix(key(seed, salt) ^ index) ^ q) ^ position) ^ ordinal), every argument
    [E] but q; `salt` separates the strategies' streams."""
    s = seed ^ salt
    key = _mix32_int(_mix32_int(s) ^ (s >> 32))
    h = _mix32((index.to(torch.int64) & _M32) ^ key)
    h = _mix32(h ^ (q & _M32))
    h = _mix32(h ^ (position & _M32))
    h = _mix32(h ^ (ordinal & _M32))
    return h.to(torch.float64) * 2.0**-32


def _event_counts(x: Tensor, name: str) -> Tensor:
    """x [B, T, C, H, W] of non-negative whole numbers, as int64 [B, T*C*H*W]."""
    if x.ndim != 5:
        raise ValueError(f"{name} acts on event frames [B, T, C, H, W], got shape {tuple(x.shape)}")
    counts = x.to(torch.int64)
    if not bool(((counts == x) & (counts >= 0)).all()):
        raise ValueError(f"{name} acts on event counts (whole numbers >= 0); x holds other values")
    return counts.reshape(x.shape[0], -1)


def _events(counts: Tensor):
    """Every event of counts [B, P] once: (row, position, ordinal in its count), each [E]."""
    row, pos = counts.nonzero(as_tuple=True)
    k = counts[row, pos]
    starts = torch.cumsum(k, 0) - k
    ordinal = torch.arange(int(k.sum()), device=counts.device) - starts.repeat_interleave(k)
    return row.repeat_interleave(k), pos.repeat_interleave(k), ordinal


def _by_event(x: Tensor, index: Tensor, name: str, move) -> Tensor:
    """x's events, each sent to the position `move(row, position, ordinal)` returns (or
    dropped where it returns -1), counted back into frames of x's shape and dtype.

    Samples are taken in chunks of about _MAX_EVENTS events; an event's fate depends on
    its own hash only, so the chunks (like the batch) leave the result unchanged."""
    counts = _event_counts(x, name)
    B, P = counts.shape
    out = torch.zeros_like(counts)
    totals = counts.sum(1).tolist()
    start = 0
    while start < B:
        end, size = start + 1, totals[start]
        while end < B and size + totals[end] <= _MAX_EVENTS:
            size, end = size + totals[end], end + 1
        row, pos, ordinal = _events(counts[start:end])
        new = move(index[start:end][row], pos, ordinal)
        kept = new >= 0
        flat = row[kept] * P + new[kept]
        out[start:end] = torch.bincount(flat, minlength=(end - start) * P).view(end - start, P)
        start = end
    return out.view(x.shape).to(x.dtype)


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")


@dataclass(frozen=True)
class EventDrop(QueryStrategy):
    """Each event dropped with probability ``p``, independently; ``n`` draws (Q = n).

    On frames [B, T, C, H, W] of event counts: a count c becomes Binomial(c, 1 - p), the
    kept events drawn by the hash of (seed, sample index, query, position, ordinal).
    """

    p: float
    n: int
    acts_on = "events"

    def __post_init__(self):
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p < 1:
            raise ValueError(f"p must be a number in [0, 1), got {self.p!r}")
        _check_n(self.n)
        object.__setattr__(self, "p", float(self.p))

    @property
    def name(self) -> str:
        return f"event_drop_p{self.p!r}_n{self.n}"

    @property
    def num_queries(self) -> int:
        return self.n

    def _apply(self, x, index, q, seed, T):
        def move(idx, pos, ordinal):
            u = event_uniforms(seed, 0xD809E7E5, idx, q, pos, ordinal)
            return torch.where(u >= self.p, pos, -1)

        return _by_event(x, index.to(x.device), self.name, move)


@dataclass(frozen=True)
class EventJitter(QueryStrategy):
    """Each event moved by d frames, d = round(sigma * z) with z standard normal, drawn
    per event; ``n`` draws (Q = n). ``sigma`` is in frames.

    On frames [B, T, C, H, W]: an event of frame t goes to frame t + d of the same pixel
    and polarity; one that would leave the sample stays in the first or last frame (the
    sample's time window is fixed), so every pixel keeps its total count: an ANN, which
    sums the frames, sees the plain input. d is drawn by comparing the event's uniform
    with Phi((k + 1/2) / sigma) for k = -K..K-1, K = ceil(8 sigma) + 1 (computed once in
    Python, float64): exact comparisons of exact values, no transcendental function on the
    device, so a GPU draws the d a CPU draws (by construction; no GPU was at hand to run it).
    """

    sigma: float
    n: int
    acts_on = "events"

    def __post_init__(self):
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) \
                or not 0 <= self.sigma < math.inf:
            raise ValueError(f"sigma must be a finite number >= 0 (in frames), got {self.sigma!r}")
        _check_n(self.n)
        object.__setattr__(self, "sigma", float(self.sigma))

    @property
    def name(self) -> str:
        return f"event_jitter_s{self.sigma!r}_n{self.n}"

    @property
    def num_queries(self) -> int:
        return self.n

    def _bounds(self) -> tuple[int, list[float]]:
        if self.sigma == 0:
            return 0, []
        K = math.ceil(8 * self.sigma) + 1
        return K, [0.5 * (1 + math.erf((k + 0.5) / self.sigma / math.sqrt(2))) for k in range(-K, K)]

    def _apply(self, x, index, q, seed, T):
        frames, per_frame = x.shape[1], math.prod(x.shape[2:]) if x.ndim == 5 else 1
        K, bounds = self._bounds()
        bounds = torch.tensor(bounds, dtype=torch.float64, device=x.device)

        def move(idx, pos, ordinal):
            u = event_uniforms(seed, 0x7A5C3B11, idx, q, pos, ordinal)
            d = torch.searchsorted(bounds, u, right=True) - K
            t = (pos // per_frame + d).clamp(0, frames - 1)
            return t * per_frame + pos % per_frame

        return _by_event(x, index.to(x.device), self.name, move)


def event_drop(p: float, n: int) -> EventDrop:
    """Strategy dropping each event with probability p, n draws (see EventDrop)."""
    return EventDrop(p, n)


def event_jitter(sigma: float, n: int) -> EventJitter:
    """Strategy moving each event by round(sigma * z) frames, n draws (see EventJitter)."""
    return EventJitter(sigma, n)


_ALLOWED = ('"plain", "flip", "dropout:p=<p>,n=<n>", "dropout:p=<p>,n=<n>,per_timestep=true", '
            '"event_drop:p=<p>,n=<n>", "event_jitter:sigma=<frames>,n=<n>", '
            'or a strategy name such as "dropout_p0.01_n10" / "dropout_p0.01_n10_pt" / "event_drop_p0.1_n10"')
_NAME = re.compile(r"dropout_p(?P<p>[0-9.eE+-]+)_n(?P<n>\d+)(?P<pt>_pt)?")
_EVENT_NAME = re.compile(r"event_(?P<kind>drop_p|jitter_s)(?P<v>[0-9.eE+-]+)_n(?P<n>\d+)")
_EVENT = {"event_drop": (EventDrop, "p"), "event_jitter": (EventJitter, "sigma")}
_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_query(spec) -> QueryStrategy:
    """A strategy from its spec string (a QueryStrategy is returned as is).

    Accepts "plain", "flip", "dropout:p=0.01,n=10[,per_timestep=true]",
    "event_drop:p=0.1,n=10", "event_jitter:sigma=0.5,n=10" and the ``name`` forms
    ("dropout_p0.01_n10[_pt]", "event_drop_p0.1_n10", "event_jitter_s0.5_n10"), so
    ``parse_query(s.name) == s``.
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
        if m := _EVENT_NAME.fullmatch(s):
            cls = EventDrop if m["kind"] == "drop_p" else EventJitter
            return cls(float(m["v"]), int(m["n"]))
        kind, _, rest = s.partition(":")
        if kind in _EVENT:
            cls, key = _EVENT[kind]
            fields = dict(kv.split("=", 1) for kv in rest.split(","))
            if fields.keys() != {key, "n"}:
                raise ValueError(f"{kind} needs keys {key} and n, got {sorted(fields)}")
            return cls(float(fields[key]), int(fields["n"]))
    except (ValueError, KeyError) as e:
        raise ValueError(f"bad query spec {spec!r} ({e}); allowed: {_ALLOWED}") from None
    raise ValueError(f"unknown query spec {spec!r}; allowed: {_ALLOWED}")
