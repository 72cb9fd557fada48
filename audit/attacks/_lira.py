"""What the two LiRA attacks share: the variance setting and the call."""

from attacks import lira
from core.errors import ConfigError

from . import Setting


def _check_optional_bool(key, value):
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not allowed; expected true or false")


FIX_VARIANCE = Setting(None, bool | None, "one global sigma for LiRA (null: on when there are fewer than 128 "
                       "references).", _check_optional_bool)
PAPER = "Carlini et al., Membership Inference Attacks From First Principles, S&P 2022"


def lira_scores(data, online: bool, fix_variance):
    if fix_variance is None:  # LiRA's paper: a global variance below 64 IN/OUT references per sample
        fix_variance = len(data.references) < 128
    return lira(data.phi_target, data.phi_references, data.ref_in, online=online, fix_variance=fix_variance)
