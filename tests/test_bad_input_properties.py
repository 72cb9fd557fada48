"""Property-based bad input: generated values for every AuditSettings field and the main data and
model keys (wrong types, out-of-range numbers, empty lists, unicode) are either accepted or refused
with one ConfigError line that names the key. In process (the objects run.py builds), plus a few
cases through run.py: exit 2, one line on stderr, nothing written in the run directory."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import run
from audit.settings import AuditSettings
from core.errors import ConfigError

ROOT = Path(run.__file__).resolve().parent
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Anything a YAML file or a flag could hold, and more: wrong types, huge and non-finite numbers,
# empty and nested lists, unicode text (control characters and newlines included).
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([0, -1, 1, 2, 3, 99, 100, 10 ** 6, 2 ** 63, -(2 ** 63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, -1e-9, 1e300, float("nan"), float("inf"), float("-inf")]),
    st.text(max_size=12), st.sampled_from(["", " ", "all", "plain", "\n", "ë\u200b", "snn", "ann", "null"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.just([]), st.just({}),
    st.dictionaries(st.text(max_size=6), scalars, max_size=2),
)


def assert_one_line_naming(err: ConfigError, key: str) -> None:
    text = str(err)
    assert "\n" not in text and "\r" not in text, f"not one line: {text!r}"
    assert key in text, f"{key!r} not named in: {text!r}"


# -- AuditSettings: every field, built from the attack registry -------------------------------
AUDIT_KEYS = [f.name for f in dataclasses.fields(AuditSettings)]


def test_every_audit_setting_is_generated():
    from audit.attacks import all_settings

    assert set(all_settings()) <= set(AUDIT_KEYS) and {"queries", "attacks", "bootstrap"} <= set(AUDIT_KEYS)


@FAST
@given(key=st.sampled_from(AUDIT_KEYS), value=values)
def test_an_audit_setting_is_accepted_or_refused_in_one_line_naming_it(key, value):
    try:
        AuditSettings(**{key: value}).check()
    except ConfigError as err:
        assert_one_line_naming(err, key)


# -- MembershipDataModule (data.*) ------------------------------------------------------------
DATA_KEYS = ["dataset", "root", "download", "num_references", "model_index", "seed", "population", "audit_size",
             "batch_size", "eval_batch_size", "num_workers", "augment", "image_size", "resize", "T"]


@pytest.fixture(scope="module")
def digits_pool():
    from datamodules.datasets import load_pool

    return load_pool("digits")


@FAST
@given(key=st.sampled_from(DATA_KEYS), value=values)
def test_a_data_key_is_accepted_or_refused_in_one_line_naming_it(digits_pool, key, value):
    from datamodules import MembershipDataModule

    name = "model.T" if key == "T" else f"data.{key}"  # run.py sets data.T from model.T
    try:
        dm = MembershipDataModule(**{"num_references": 2, key: value})
        if dm.dataset == "digits":
            dm.pool = digits_pool  # the plan's checks (population, audit_size, seed) without reloading
        dm.planned()  # run_dir None: draws the plan in memory, writes nothing
    except ConfigError as err:
        assert_one_line_naming(err, name)


# -- Classifier (model.*) ---------------------------------------------------------------------
MODEL_KEYS = ["kind", "arch", "T", "neuron", "surrogate", "encoding", "tau", "v_threshold", "width", "optimizer",
              "lr", "weight_decay", "momentum", "scheduler", "init", "norm", "dp", "net", "input_frames"]


@FAST
@given(key=st.sampled_from(MODEL_KEYS), value=values)
def test_a_model_key_is_accepted_or_refused_in_one_line_naming_it(key, value):
    from lightning_modules import Classifier

    # an accepted width builds the network: a huge one is a memory question (training/memory.py), not a value error
    assume(not (key == "width" and isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and value > 4))
    name = "input_frames" if key == "input_frames" else f"model.{key}"
    try:
        Classifier(**{"kind": "ann", "width": 0.25, key: value})
    except ConfigError as err:
        assert_one_line_naming(err, name)


@FAST
@given(dp=st.dictionaries(st.sampled_from(["epsilon", "noise_multiplier", "delta", "max_grad_norm", "accountant",
                                           "fix_modules"]), values, max_size=5))
def test_a_dp_mapping_is_accepted_or_refused_in_one_line_naming_model_dp(dp):
    from lightning_modules import Classifier

    try:
        Classifier(kind="ann", width=0.25, dp=dp)
    except ConfigError as err:
        assert_one_line_naming(err, "model.dp")


@pytest.mark.parametrize("k, allowed", [(1024, True), (1026, False), (10 ** 8, False), (2 ** 63, False)])
def test_a_reference_count_past_the_maximum_is_refused_before_the_plan_is_drawn(k, allowed):
    # A huge K, as the property test above may draw, drew its plan pair by pair until the machine ran out of memory.
    from datamodules import MembershipDataModule
    from datamodules.plan import make_plan

    for build in (lambda: MembershipDataModule(num_references=k), lambda: make_plan("digits", 1797, k, 0)):
        if allowed:
            build()
            continue
        with pytest.raises(ConfigError) as err:
            build()
        assert str(err.value).startswith(f"data.num_references={k} is not allowed; expected an even integer in [0, 1024]")


# -- through run.py: exit 2, one line, nothing written ------------------------------------------
@pytest.mark.parametrize("flags, key", [
    (["--data.seed", str(2 ** 70)], "data.seed"),
    (["--model.tau", "nan"], "model.tau"),
    (["--queries", "[]"], "queries"),
    (["--data.num_references", "100000000"], "data.num_references"),  # once filled the memory drawing its plan
])
def test_bad_flags_through_run_py_exit_2_in_one_line_and_write_nothing(tmp_path, flags, key):
    rd = tmp_path / "run"
    done = subprocess.run([sys.executable, "run.py", "fit", "--run_dir", str(rd), "--data.num_references", "2",
                           "--model.kind", "ann", "--model.width", "0.25", "--trainer.max_epochs", "1", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore",
                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], done.stderr[-2000:]
    assert not rd.exists()
