"""Query strategies: masks re-stated in pure Python, determinism, parser, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import InputDropout, flip, input_dropout, parse_query, plain
from attacks.queries import dropout_uniforms

M32 = 0xFFFFFFFF


def _mix(x):  # lowbias32 on Python ints (unbounded, so no overflow questions)
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def _uniform_py(seed, index, q, pos, t=None):
    h = _mix(_mix(seed ^ 0x5EED0D0B) ^ (seed >> 32))
    h = _mix(index ^ h)
    h = _mix(h ^ q)
    if t is not None:
        h = _mix(h ^ t)
    return _mix(h ^ pos) / 2**32


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**40), index=st.integers(0, 2**31), q=st.integers(0, 50), t=st.none() | st.integers(0, 7))
def test_uniforms_match_pure_python_hash(seed, index, q, t):
    u = dropout_uniforms(seed, torch.tensor([index, index + 1]), q, 9, None if t is None else t + 1)
    for b, idx in enumerate((index, index + 1)):
        for pos in range(9):
            got = u[t, b, pos] if t is not None else u[b, pos]
            assert got.item() == _uniform_py(seed, idx, q, pos, t)


def test_dropout_zeroes_whole_pixels_with_mask_from_the_hash():
    x = torch.rand(2, 3, 4, 5) + 1  # no zeros before dropout
    strategy = input_dropout(0.4, 3)
    out = strategy.apply(x, torch.tensor([11, 4]), 2, seed=7)
    for b, idx in enumerate((11, 4)):
        for pos in range(20):
            dropped = _uniform_py(7, idx, 2, pos) < 0.4
            h, w = divmod(pos, 5)
            pixel = out[b, :, h, w]
            assert torch.equal(pixel, torch.zeros(3)) if dropped else torch.equal(pixel, x[b, :, h, w])


def test_drop_rate_is_p():
    x = torch.ones(200, 1, 32, 32)
    out = input_dropout(0.3, 1).apply(x, torch.arange(200), 0, seed=0)
    # 204,800 Bernoulli(0.3) pixels: standard error 0.001
    assert (out == 0).double().mean().item() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("per_timestep", [False, True])
def test_mask_independent_of_batch_size_and_position(per_timestep):
    strategy = input_dropout(0.5, 4, per_timestep=per_timestep)
    x = torch.rand(7, 3, 6, 6) + 1
    index = torch.tensor([40, 3, 17, 5, 99, 0, 12])
    batch = strategy.apply(x, index, 3, seed=123, T=3)
    alone = strategy.apply(x[3:4], index[3:4], 3, seed=123, T=3)
    reordered = strategy.apply(x.flip(0), index.flip(0), 3, seed=123, T=3)
    b = (slice(None), 3) if per_timestep else (3,)
    assert torch.equal(batch[b], alone[(slice(None), 0) if per_timestep else (0,)])
    assert torch.equal(batch, reordered.flip(1 if per_timestep else 0))
    assert batch.shape == ((3, 7, 3, 6, 6) if per_timestep else (7, 3, 6, 6))


def test_masks_differ_across_queries_seeds_and_time_steps_and_are_shared_across_channels():
    x = torch.ones(1, 3, 16, 16)
    idx = torch.tensor([5])
    s = input_dropout(0.5, 2)
    assert not torch.equal(s.apply(x, idx, 0, 0), s.apply(x, idx, 1, 0))
    assert not torch.equal(s.apply(x, idx, 0, 0), s.apply(x, idx, 0, 1))
    assert not torch.equal(s.apply(x, idx, 0, 0), s.apply(x, torch.tensor([6]), 0, 0))
    out = s.apply(x, idx, 0, 0)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    pt = input_dropout(0.5, 2, per_timestep=True).apply(x, idx, 0, 0, T=2)
    assert not torch.equal(pt[0], pt[1])


def test_masks_are_identical_in_another_process():
    code = (
        "import json, torch; from attacks import input_dropout\n"
        "x = torch.ones(3, 2, 8, 8)\n"
        "m = input_dropout(0.25, 5, per_timestep=True).apply(x, torch.tensor([0, 7, 12345]), 4, seed=99, T=2)\n"
        "print(json.dumps(m.flatten().tolist()))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    theirs = torch.tensor(json.loads(out.stdout))
    ours = input_dropout(0.25, 5, per_timestep=True).apply(torch.ones(3, 2, 8, 8), torch.tensor([0, 7, 12345]), 4,
                                                              seed=99, T=2)
    assert torch.equal(ours.flatten(), theirs)
    assert torch.equal(ours, input_dropout(0.25, 5, per_timestep=True).apply(
        torch.ones(3, 2, 8, 8), torch.tensor([0, 7, 12345]), 4, seed=99, T=2))


def test_plain_and_flip():
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    idx = torch.tensor([0])
    assert plain.num_queries == 1 and torch.equal(plain.apply(x, idx, 0), x)
    assert flip.num_queries == 2 and torch.equal(flip.apply(x, idx, 0), x)
    assert torch.equal(flip.apply(x, idx, 1), x[..., [3, 2, 1, 0]])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("plain", plain),
        ("flip", flip),
        ("dropout:p=0.01,n=10", InputDropout(0.01, 10)),
        ("dropout:p=0.01,n=10,per_timestep=true", InputDropout(0.01, 10, True)),
        ("dropout:n=3,p=0.2,per_timestep=false", InputDropout(0.2, 3)),
        ("dropout_p0.01_n10", InputDropout(0.01, 10)),
        ("dropout_p1e-05_n3_pt", InputDropout(1e-5, 3, True)),
    ],
)
def test_parse_query(spec, expected):
    got = parse_query(spec)
    assert got == expected
    assert parse_query(got.name) == got
    assert got.num_queries == expected.num_queries


def test_names():
    assert plain.name == "plain" and flip.name == "flip"
    assert input_dropout(0.01, 10).name == "dropout_p0.01_n10"
    assert input_dropout(0.01, 10, per_timestep=True).name == "dropout_p0.01_n10_pt"
    odd = input_dropout(0.123456789, 2)
    assert parse_query(odd.name) == odd


@pytest.mark.parametrize("spec", ["", "noise", "dropout", "dropout:p=0.01", "dropout:p=1,n=3", "dropout:p=0.1,n=0",
                                  "dropout:p=0.1,n=2,per_timestep=maybe", "dropout:p=0.1,n=2,q=1", 3])
def test_parse_query_rejects_with_allowed_forms(spec):
    with pytest.raises(ValueError, match="plain"):
        parse_query(spec)


@pytest.mark.parametrize("p, n, name", [(1.0, 2, "p"), (-0.1, 2, "p"), (float("nan"), 2, "p"), (0.1, 0, "n"),
                                        (0.1, 1.5, "n")])
def test_input_dropout_bad_arguments(p, n, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        input_dropout(p, n)


def test_apply_bad_arguments():
    x = torch.ones(2, 1, 3, 3)
    with pytest.raises(ValueError, match="T must"):
        input_dropout(0.1, 2, per_timestep=True).apply(x, torch.arange(2), 0, 0)
    with pytest.raises(ValueError, match="q must"):
        input_dropout(0.1, 2).apply(x, torch.arange(2), 2, 0)
    with pytest.raises(ValueError, match="index must"):
        flip.apply(x, torch.arange(3), 0, 0)


# -- event data: event_drop and event_jitter on frames [B, T, C, H, W] of event counts ----------
from attacks import EventDrop, EventJitter, event_drop, event_jitter  # noqa: E402
from attacks import queries as queries_module  # noqa: E402


def _event_uniform_py(seed, salt, index, q, pos, ordinal):
    s = seed ^ salt
    h = _mix(_mix(s) ^ (s >> 32))
    for v in (index, q, pos, ordinal):
        h = _mix(h ^ v)
    return h / 2**32


def _frames(b=5, t=4, seed=0, high=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (b, t, 2, 5, 6), generator=g).float()


def test_event_drop_keeps_each_event_by_its_hash():
    x = _frames(b=2, high=3)
    out = event_drop(0.4, 3).apply(x, torch.tensor([9, 2]), 1, seed=5)
    flat_x, flat_out = x.reshape(2, -1), out.reshape(2, -1)
    for b, idx in enumerate((9, 2)):
        for pos in range(flat_x.shape[1]):
            kept = sum(_event_uniform_py(5, 0xD809E7E5, idx, 1, pos, j) >= 0.4 for j in range(int(flat_x[b, pos])))
            assert flat_out[b, pos].item() == kept


def test_event_jitter_moves_each_event_by_its_hash_and_clamps_at_the_ends():
    import math

    x = _frames(b=2, high=3)
    sigma = 0.8
    out = event_jitter(sigma, 2).apply(x, torch.tensor([4, 11]), 0, seed=1)
    K = math.ceil(8 * sigma) + 1
    bounds = [0.5 * (1 + math.erf((k + 0.5) / sigma / math.sqrt(2))) for k in range(-K, K)]
    per_frame = 2 * 5 * 6
    expected = torch.zeros_like(x).reshape(2, -1)
    for b, idx in enumerate((4, 11)):
        flat = x[b].reshape(-1)
        for pos in range(flat.numel()):
            for j in range(int(flat[pos])):
                u = _event_uniform_py(1, 0x7A5C3B11, idx, 0, pos, j)
                d = sum(bound <= u for bound in bounds) - K
                t = min(max(pos // per_frame + d, 0), x.shape[1] - 1)
                expected[b, t * per_frame + pos % per_frame] += 1
    assert torch.equal(out, expected.view_as(x))


@pytest.mark.parametrize("strategy", [event_drop(0.3, 4), event_jitter(1.5, 4)], ids=str)
def test_event_queries_do_not_depend_on_batch_size_order_or_chunking(strategy, monkeypatch):
    x, index = _frames(b=7), torch.tensor([40, 3, 17, 5, 99, 0, 12])
    batch = strategy.apply(x, index, 3, seed=123)
    alone = strategy.apply(x[3:4], index[3:4], 3, seed=123)
    reordered = strategy.apply(x.flip(0), index.flip(0), 3, seed=123)
    assert torch.equal(batch[3:4], alone) and torch.equal(batch, reordered.flip(0))
    monkeypatch.setattr(queries_module, "_MAX_EVENTS", 50)  # many small chunks, some of one sample
    assert torch.equal(strategy.apply(x, index, 3, seed=123), batch)
    assert not torch.equal(batch, strategy.apply(x, index, 2, seed=123))  # another query, other events
    assert not torch.equal(batch, strategy.apply(x, index, 3, seed=124))


def test_event_queries_are_identical_in_another_process():
    code = (
        "import json, torch; from attacks import event_drop, event_jitter\n"
        "g = torch.Generator().manual_seed(0); x = torch.randint(0, 4, (3, 4, 2, 5, 6), generator=g).float()\n"
        "i = torch.tensor([0, 7, 12345])\n"
        "print(json.dumps([event_drop(0.25, 5).apply(x, i, 4, seed=99).flatten().tolist(),"
        " event_jitter(0.7, 5).apply(x, i, 4, seed=99).flatten().tolist()]))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    drop, jitter = (torch.tensor(v) for v in json.loads(out.stdout))
    x, i = _frames(b=3), torch.tensor([0, 7, 12345])
    assert torch.equal(event_drop(0.25, 5).apply(x, i, 4, seed=99).flatten(), drop)
    assert torch.equal(event_jitter(0.7, 5).apply(x, i, 4, seed=99).flatten(), jitter)


def test_event_drop_rate_is_p_and_counts_only_fall():
    x = torch.full((50, 4, 2, 16, 16), 3.0)  # 307,200 events
    out = event_drop(0.2, 1).apply(x, torch.arange(50), 0, seed=0)
    assert (out <= x).all() and out.dtype == x.dtype
    # Binomial(307200, 0.2): standard error of the rate 0.0007
    assert 1 - out.sum().item() / x.sum().item() == pytest.approx(0.2, abs=0.005)
    assert torch.equal(event_drop(0.0, 1).apply(x, torch.arange(50), 0), x)


def test_event_jitter_keeps_every_pixels_total_and_moves_by_rounded_gaussian_steps():
    x = torch.zeros(200, 41, 1, 2, 2)
    x[:, 20] = 5.0  # 4,000 events in the middle frame, far from the ends
    out = event_jitter(2.0, 1).apply(x, torch.arange(200), 0, seed=0)
    assert torch.equal(out.sum(1), x.sum(1))  # what an ANN (frames summed) sees is unchanged
    d = torch.arange(41.0) - 20
    weights = out.sum((0, 2, 3, 4))
    mean = (weights * d).sum() / weights.sum()
    var = (weights * (d - mean) ** 2).sum() / weights.sum()
    # round(2 z): variance 4 + 1/12 = 4.08 (the rounding adds about 1/12); 4,000 draws: se ~ 0.09
    assert mean.item() == pytest.approx(0.0, abs=0.15) and var.item() == pytest.approx(4.08, abs=0.35)
    assert torch.equal(event_jitter(0.0, 1).apply(x, torch.arange(200), 0), x)


@pytest.mark.parametrize("spec, expected", [
    ("event_drop:p=0.1,n=10", EventDrop(0.1, 10)),
    ("event_drop:n=3,p=0.05", EventDrop(0.05, 3)),
    ("event_jitter:sigma=0.5,n=4", EventJitter(0.5, 4)),
    ("event_drop_p0.1_n10", EventDrop(0.1, 10)),
    ("event_jitter_s2.0_n1", EventJitter(2.0, 1)),
])
def test_parse_event_queries(spec, expected):
    got = parse_query(spec)
    assert got == expected and parse_query(got.name) == got and got.num_queries == expected.n


@pytest.mark.parametrize("spec", ["event_drop:p=0.1", "event_drop:p=1,n=2", "event_jitter:sigma=-1,n=2",
                                  "event_jitter:p=0.1,n=2", "event_jitter:sigma=inf,n=2", "event_drop:p=0.1,n=0"])
def test_parse_event_queries_rejects_with_allowed_forms(spec):
    with pytest.raises(ValueError, match="event_drop:p=<p>,n=<n>"):
        parse_query(spec)


def test_image_and_event_strategies_refuse_each_others_inputs():
    with pytest.raises(ValueError, match="for event frames .* use event_drop or event_jitter"):
        input_dropout(0.1, 2).apply(_frames(b=2), torch.arange(2), 0)
    with pytest.raises(ValueError, match=r"event_drop_p0.1_n2 acts on event frames \[B, T, C, H, W\]"):
        event_drop(0.1, 2).apply(torch.ones(2, 3, 4, 4), torch.arange(2), 0)
    with pytest.raises(ValueError, match="acts on event counts"):
        event_jitter(1.0, 2).apply(_frames(b=2) + 0.5, torch.arange(2), 0)
