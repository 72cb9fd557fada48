"""Membership-inference scoring: plain math on tensors (no Lightning).

signals.py  true-class probability and rescaled logit from logits
queries.py  query strategies (plain, flip, input dropout; event drop and jitter) and their parser
collect.py  run a model over a loader with a strategy -> logits / signals by sample index
            (for an SNN, also per latency t from one pass: query_signals_by_latency)
scores.py   Attack-P, Attack-R, LiRA, reference ratio;  rmia.py  RMIA
metrics.py  exact ROC, AUC, TPR at low FPR;  plots.py  ROC and histogram PNGs
intervals.py  error bars: bootstrap and DeLong intervals of the ROC metrics, t-intervals over
              targets, paired differences and their verdicts
access.py   the SNN-native access levels: label-only, Gaussian likelihood ratio over a
            feature vector, reference-trained classifier, LiRA over time steps
epsilon.py  empirical epsilon lower bound from one training run (Steinke, Nasr, Jagielski)
"""

from .access import gaussian_fit, gaussian_lr, label_only, reference_classifier, steps_lira
from .collect import query_logits, query_signals, query_signals_by_latency
from .epsilon import eps_lower_bound, p_value
from .intervals import (
    delong_auc_interval,
    mean_interval,
    measurable,
    paired_difference,
    resolution_note,
    roc_bootstrap,
    roc_intervals,
    verdict,
)
from .metrics import FPR_LEVELS, downsample_roc, roc_metrics
from .plots import plot_roc, plot_score_histograms
from .queries import (EventDrop, EventJitter, Flip, InputDropout, Plain, QueryStrategy, event_drop, event_jitter, flip,
                      input_dropout, parse_query, plain)
from .rmia import rmia
from .scores import attack_p, attack_r, lira, reference_ratio
from .signals import rescaled_logit, true_class_probability

__all__ = [
    "true_class_probability", "rescaled_logit",
    "QueryStrategy", "Plain", "Flip", "InputDropout", "plain", "flip", "input_dropout", "parse_query",
    "EventDrop", "EventJitter", "event_drop", "event_jitter",
    "query_logits", "query_signals", "query_signals_by_latency",
    "attack_p", "attack_r", "rmia", "lira", "reference_ratio",
    "label_only", "gaussian_lr", "gaussian_fit", "reference_classifier", "steps_lira",
    "roc_metrics", "downsample_roc", "FPR_LEVELS",
    "roc_intervals", "roc_bootstrap", "delong_auc_interval", "measurable", "resolution_note",
    "mean_interval", "paired_difference", "verdict",
    "eps_lower_bound", "p_value",
    "plot_roc", "plot_score_histograms",
]
