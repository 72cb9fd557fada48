"""The audit engine: from trained models to attack metrics and a report.

settings.py     AuditSettings: every audit option, declared and checked once
signals.py      a model's signals on the audit set and the population (one pass per query)
distributed.py  DDP: each rank queries its shard, rank 0 merges (every sample once)
cache.py        signals cached per (checkpoint, query, latency, seed) in model_<k>/signals/
scoring.py      signals -> attack scores -> ROC metrics; which models are references
engine.py       Audit: one target's samples, references, attacks, scoring and report
report.py       report.json, report.md, roc.png, latency.png
offline.py      `run.py audit`: finished checkpoints, a grid of queries and latencies
"""

from .engine import Audit, model_facts
from .scoring import ATTACKS, LOGGED
from .settings import AuditSettings

__all__ = ["ATTACKS", "LOGGED", "Audit", "AuditSettings", "model_facts"]
