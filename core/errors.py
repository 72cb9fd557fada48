"""One exception family for every error a user or a cluster can cause.

`ToolError` is the base; each subclass says its exit status. `ConfigError` (exit 2) is a bad
config value, a missing or corrupt file, or a plan that does not match: its message names the
key or the file, the value, and what is allowed. `RunFailure` (exit 1) is a run that started
from good input and failed (a study entry that failed, plans that disagree). The SLURM and
study errors subclass these two. `run.py` turns every `ToolError` that reaches it into the
same single line on stderr, `error: <message>`, and the subclass's exit status.
"""

from __future__ import annotations

import math


class ToolError(Exception):
    """Base of the errors `run.py` ends in one line; `exit_code` is the process's exit status."""

    exit_code = 1


class ConfigError(ToolError, ValueError):
    """A bad config value, a missing or corrupt file, or a plan that does not match (exit 2)."""

    exit_code = 2


class RunFailure(ToolError, RuntimeError):
    """A run that began from good input and failed: a study entry, plans that disagree (exit 1)."""

    exit_code = 1


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


# What a collective says when another process of the group is gone (killed, out of memory,
# its node lost): gloo's TCP pair, NCCL's communicator or watchdog, the store.
_LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "Watchdog caught collective operation timeout",
              "NCCL error", "Socket Timeout", "Timed out waiting", "failed to recv", "failed to send")


def lost_peer(err: BaseException) -> str | None:
    """For an error raised in a DDP process because another process of the run is gone: the
    one line that process ends with (which rank, what the backend said, and that a rerun of
    the same command resumes). None for any other error, which keeps its traceback."""
    import os

    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    rank = world = None
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif os.environ.get("WORLD_SIZE", "").isdigit():
        rank, world = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0), int(os.environ["WORLD_SIZE"])
    if not world or world < 2:
        return None
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause)
        backend = isinstance(cause, getattr(dist, "DistError", ())) or (
            isinstance(cause, RuntimeError) and any(marker in text for marker in _LOST_PEER))
        if backend:
            said = next((m for m in _LOST_PEER if m in text), first_line(cause, 120))
            return (f"rank {rank} of {world}: another process of this DDP run stopped ({said}), so this one stops "
                    "too; rerun the same command: finished models are kept and the interrupted one resumes "
                    "from its last checkpoint")
        cause = cause.__cause__ or cause.__context__
    return None


def check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def check_int(key: str, value, minimum: int | None = None, maximum: int | None = None, what: str = "") -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise ConfigError(f"{key}={value!r} is not allowed; expected an integer in [{lo}, {hi}]{what}")


def check_number(key: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, what: str = "") -> None:
    """A finite real number in [low, high] (an end is excluded with low_open / high_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{key}={value!r} is not allowed; expected a number in {interval}{what}")
