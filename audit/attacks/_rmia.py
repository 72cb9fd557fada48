"""What the two RMIA attacks share: their settings and the call."""

from attacks import rmia
from core.errors import ConfigError, check_number

from . import Setting


def _check_bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not allowed; expected true or false")


GAMMA = Setting(1.0, float, "gamma of RMIA, > 0.", lambda k, v: check_number(k, v, 0.0, low_open=True))
PER_QUERY = Setting(False, bool, "RMIA scores each query and averages the scores (else it averages the signals).",
                    _check_bool)
PAPER = "Zarifzadeh, Liu, Shokri, Low-Cost High-Power Membership Inference Attacks, ICML 2024"


def rmia_scores(data, offline_a, gamma, per_query):
    if per_query:
        return rmia(data.p_target, data.p_references, data.pz_target, data.pz_references, data.ref_in,
                    offline_a=offline_a, gamma=gamma, per_query=True)
    return rmia(data.p_target.mean(0), data.p_references_mean, data.pz_target.mean(0),
                data.pz_references_mean, data.ref_in, offline_a=offline_a, gamma=gamma)
