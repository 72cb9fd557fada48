"""One exception type for user-facing configuration and data errors.

`run.py` turns a `ConfigError` into a single line on stderr and exit code 2, so
every message must name the key, the value and what is allowed.
"""


class ConfigError(ValueError):
    """A bad config value, a missing or corrupt file, or a plan that does not match."""


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
