"""Quiet by default: warnings the tool provokes on purpose are filtered, others are not; an
example that needs an optional package says how to install it."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest
from lightning.pytorch.utilities import rank_zero_warn

from training.console import quiet_lightning


def test_the_logging_interval_warning_of_a_small_run_is_filtered_and_others_are_not():
    quiet_lightning()
    with warnings.catch_warnings(record=True) as seen:  # keeps the filters installed above
        # Lightning's text for a run with fewer batches per epoch than log_every_n_steps
        rank_zero_warn("The number of training batches (3) is smaller than the logging interval "
                       "Trainer(log_every_n_steps=5). Set a lower value for log_every_n_steps if you want to see "
                       "logs for the training epoch.")
        rank_zero_warn("something else the user should see")
    assert [str(w.message) for w in seen] == ["something else the user should see"]


def test_the_snntorch_example_without_snntorch_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "snntorch", None)  # import snntorch now raises ImportError
    monkeypatch.delitem(sys.modules, "examples.snntorch_net", raising=False)
    with pytest.raises(ImportError, match=r"pip install snntorch .*pip install -e \"\.\[examples\]\""):
        importlib.import_module("examples.snntorch_net")
    monkeypatch.delitem(sys.modules, "examples.snntorch_net", raising=False)
