"""The audit's scoring at scale: no [K, Q, N] stack unless per-query RMIA reads it, the same
numbers as the stacked formulation, and benchmarks/audit_scale.py's quick mode."""

import json
import runpy
from pathlib import Path

import pytest
import torch

from attacks import attack_p, attack_r, lira, reference_ratio, rmia
from audit.scoring import ATTACKS, score_attacks
from audit.signals import with_probability

ROOT = Path(__file__).resolve().parents[1]


def stacked_score_attacks(names, target, references, ref_in, *, rmia_offline_a=0.3, rmia_gamma=1.0,
                          rmia_per_query=False, lira_fix_variance=None):
    """score_attacks as it was before the per-reference means: every reference's [Q, N] signals
    stacked into [K, Q, N] float64 first, then averaged over Q."""
    p_t = target["audit/probability"].double()
    p_r = torch.stack([r["audit/probability"] for r in references]).double()
    pz_t = target["population/probability"].double()
    pz_r = torch.stack([r["population/probability"] for r in references]).double()
    phi_t = target["audit/rescaled_logit"].double().mean(0)
    phi_r = torch.stack([r["audit/rescaled_logit"] for r in references]).double().mean(1)
    if lira_fix_variance is None:
        lira_fix_variance = len(references) < 128
    out = {}
    for name in names:
        if name == "attack_p":
            out[name] = attack_p(p_t.mean(0))
        elif name == "attack_r":
            out[name] = attack_r(p_t.mean(0), p_r.mean(1), ref_in)
        elif name == "reference_ratio":
            out[name] = reference_ratio(p_t.mean(0), p_r.mean(1))
        elif name.startswith("rmia_"):
            a = rmia_offline_a if name == "rmia_offline" else None
            if rmia_per_query:
                out[name] = rmia(p_t, p_r, pz_t, pz_r, ref_in, offline_a=a, gamma=rmia_gamma, per_query=True)
            else:
                out[name] = rmia(p_t.mean(0), p_r.mean(1), pz_t.mean(0), pz_r.mean(1), ref_in, offline_a=a,
                                 gamma=rmia_gamma)
        elif name.startswith("lira_"):
            out[name] = lira(phi_t, phi_r, ref_in, online=name == "lira_online", fix_variance=lira_fix_variance)
    return out


def signals(k: int, q: int, n: int, z: int, seed: int = 0):
    """Target and K references as the signal cache returns them, and the references' ref_in."""
    g = torch.Generator().manual_seed(seed)
    ref_in = torch.zeros(k, n, dtype=torch.bool)
    for i in range(0, k, 2):
        ref_in[i] = torch.rand(n, generator=g) < 0.5
        ref_in[i + 1] = ~ref_in[i]

    def model(member):
        phi_x = 3 * torch.randn(n, generator=g) + member + torch.randn(q, n, generator=g)
        phi_z = 3 * torch.randn(z, generator=g) + torch.randn(q, z, generator=g)
        return with_probability({"audit/rescaled_logit": phi_x, "audit/correct": phi_x > 0,
                                 "population/rescaled_logit": phi_z, "population/correct": phi_z > 0})

    target = model(torch.rand(n, generator=g) < 0.5)
    return target, [model(ref_in[i]) for i in range(k)], ref_in


@pytest.mark.parametrize("k, q, n, z", [(2, 1, 37, 11), (4, 3, 1001, 97), (6, 18, 2048, 300), (8, 7, 4099, 513)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("per_query", [False, True])
def test_scores_equal_the_stacked_formulation(k, q, n, z, threads, per_query):
    target, refs, ref_in = signals(k, q, n, z, seed=k * 100 + q)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        new = score_attacks(ATTACKS, target, refs, ref_in, rmia_per_query=per_query)
        old = stacked_score_attacks(ATTACKS, target, refs, ref_in, rmia_per_query=per_query)
    finally:
        torch.set_num_threads(saved)
    assert list(new) == list(ATTACKS)
    for name in ATTACKS:
        assert torch.equal(new[name], old[name]), name  # bit for bit


def test_no_reference_by_query_by_sample_stack(monkeypatch):
    """Averaged signals never stack the K references' [Q, N] signals into [K, Q, N]; only
    per-query RMIA does (the spy sees it there, so it would see it elsewhere too)."""
    target, refs, ref_in = signals(4, 5, 200, 50)
    shapes = []
    real_stack = torch.stack

    def spy(tensors, *args, **kwargs):
        out = real_stack(tensors, *args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "stack", spy)
    score_attacks(ATTACKS, target, refs, ref_in)
    assert shapes and all(len(s) == 2 for s in shapes), shapes
    shapes.clear()
    score_attacks(["rmia_offline", "rmia_online"], target, refs, ref_in, rmia_per_query=True)
    assert sorted(s for s in shapes if len(s) == 3) == [(4, 5, 50), (4, 5, 200)]  # once for both variants


def test_benchmark_quick_mode(tmp_path, capsys):
    """benchmarks/audit_scale.py --quick: every case runs in its own process and reports every
    attack with its times, the inputs' and the peak memory, and the scaling lines."""
    bench = runpy.run_path(str(ROOT / "benchmarks" / "audit_scale.py"))
    out_json = tmp_path / "cases.json"
    assert bench["main"](["--quick", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    cases = json.loads(out_json.read_text())
    assert {(c["k"], c["n"]) for c in cases} == {(4, 400), (8, 400), (8, 200)}
    for c in cases:
        assert set(c["per_attack"]) == set(ATTACKS)
        assert c["total_s"] > 0 and c["threads"] == 2
        assert 0 < c["inputs_gb"] <= c["peak_gb"]
        assert all(0.5 < auc <= 1 for name, auc in c["auc"].items() if name != "attack_p")
    assert "K 4 -> 8 (2x)" in text and "N 200 -> 400" in text and "goal at K = 8, N = 400" in text
