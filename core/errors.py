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
