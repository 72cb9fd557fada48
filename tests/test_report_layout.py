"""docs/report.md's table of report.json keys against what the writer writes.

The report is built through the real writer (`audit.Audit.write_report`, with `rotate` for
every model as the target and `audit.offline.add_across_targets` for the latency series), on
synthetic signals of a tiny plan: no model is trained. Every key path the page lists must exist
in that report, and every top-level key the writer writes must be listed."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from audit import AuditSettings
from audit.canaries import canary_audit
from audit.engine import Audit, rotate
from audit.offline import add_across_targets
from audit.scoring import setting_name

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "report.md"
N, Z, K = 400, 200, 2


def documented_paths() -> list[str]:
    """The key column of the page's report.json table."""
    text = PAGE.read_text()
    section = text.split("## `report.json`", 1)[1]
    paths = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert len(paths) > 20, "docs/report.md: the report.json table was not found"
    return paths


def resolve(obj, parts: list[str]) -> bool:
    """Whether the key path exists in obj; `<...>` matches any key (at least one must continue)."""
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if not isinstance(obj, dict):
        return False
    if head.startswith("<") and head.endswith(">"):
        return any(resolve(v, rest) for v in obj.values())
    return head in obj and resolve(obj[head], rest)


def split(path: str) -> list[str]:
    # metric names hold dots ("tpr@0.1%fpr"): split on dots that are not inside one
    return re.findall(r"<[^>]+>|tpr@[\d.]+%fpr(?:_ci)?|[^.]+", path)


def signals(member_row: torch.Tensor, strength: float, gen: torch.Generator) -> dict:
    """One model's signals for the plain query: members score higher by `strength`."""
    p = (0.5 + strength * member_row.double() + 0.1 * torch.rand(N, generator=gen, dtype=torch.float64)).clamp(0.01, 0.99)
    pz = (0.5 + 0.1 * torch.rand(Z, generator=gen, dtype=torch.float64)).clamp(0.01, 0.99)
    return {"audit/probability": p[None], "population/probability": pz[None],
            "audit/rescaled_logit": torch.logit(p)[None], "audit/correct": (p > 0.5)[None],
            "population/correct": (pz > 0.5)[None]}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    gen = torch.Generator().manual_seed(0)
    half = torch.randperm(N, generator=gen) < N // 2
    ref = torch.randperm(N, generator=gen) < N // 2
    membership = torch.stack([half, ref, ~ref])  # model 0, and one complementary reference pair
    dm = SimpleNamespace(membership=membership, num_references=K, run_dir=None,
                         plan=SimpleNamespace(fingerprint={"dataset": "synthetic", "num_references": K}),
                         population_indices=list(range(Z)), subset_positions=lambda subset, seed: None)
    settings = AuditSettings(bootstrap=100).check()
    audit = Audit(dm, 0, settings, refs=[1, 2])
    sig = {m: {"plain": signals(membership[m], 0.2, gen)} for m in range(K + 1)}
    metrics = audit.score(sig[0]["plain"], [sig[k]["plain"] for k in audit.refs])
    # Two latencies, every model as the target at each: the latency series and their means
    rotated, series = {}, {}
    for t in (1, 2):
        for m, r in rotate(dm, settings, sig, [0, 1, 2], [0, 1, 2], t).items():
            rotated.setdefault(m, {**r, "attacks": {}})["attacks"].update(r["attacks"])
        for n, mm in audit.score(sig[0]["plain"], [sig[k]["plain"] for k in audit.refs]).items():
            series.setdefault(n, []).append((t, mm, setting_name(n, "plain", t)))
    latency = {n: {"t": [t for t, _, _ in pts], **{k: [float(m[k]) for _, m, _ in pts] for k in ("auc", "tpr@1%fpr")}}
               for n, pts in series.items()}
    add_across_targets(latency, series, rotated)
    dp = {"epsilon": 1e-3, "delta": 1e-5, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "sample_rate": 0.1,
          "steps": 10, "accountant": "rdp", "scope": "all training"}  # eps_lb above it: a warning
    out = tmp_path_factory.mktemp("layout")
    included = torch.rand(50, generator=gen) < 0.5
    canary_dm = SimpleNamespace(canary_included=included, plan=SimpleNamespace(canaries=SimpleNamespace(kind="noise")))
    canaries = canary_audit(canary_dm, included.double() + 0.1 * torch.rand(50, generator=gen, dtype=torch.float64), 0.0)
    audit.write_report(out, metrics, facts={"kind": "snn", "arch": "cnn", "T": 2}, epoch=0,
                       acc=audit.accuracies(sig[0]["plain"]), history=[],
                       extra_target={"distinct_confidences": {"plain": 1.0}, "dp": dp, "precision": "32-true"},
                       extra_settings={"latencies": [1, 2], "signal_cache": {"hits": 0}},
                       latency=latency, targets=rotated, canary_audit=canaries)
    return json.loads((out / "report.json").read_text())


def test_every_documented_key_is_written(report):
    missing = [p for p in documented_paths() if not resolve(report, split(p))]
    assert not missing, f"docs/report.md lists keys the writer does not write: {missing}"


def test_every_written_top_level_key_is_documented(report):
    documented = {split(p)[0] for p in documented_paths()}
    assert set(report) <= documented, f"report.json keys missing from docs/report.md: {sorted(set(report) - documented)}"
    # and the synthetic report reaches every optional key, so the check above covers them all
    assert set(report) == documented


def test_every_written_attack_key_is_documented(report):
    documented = {split(p)[2] for p in documented_paths() if p.startswith("attacks.<attack>.")}
    for name, row in report["attacks"].items():
        assert set(row) <= documented, (name, sorted(set(row) - documented))
