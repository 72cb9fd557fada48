"""Latency-resolved leakage: an SNN's signals after t = 1..T steps from one forward pass."""

import json
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import run
from attacks import input_dropout, query_signals, query_signals_by_latency, roc_metrics
from audit.distributed import merge_shards, pack_shard, shard_loader
from audit.scoring import ATTACKS, score_attacks
from audit.signals import compute_signals, compute_signals_by_latency
from datamodules import MembershipDataModule
from lightning_modules import Classifier

T = 4
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class Indexed(Dataset):
    """(x, y, index) samples, as the data module's audit and population sets yield them."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        # Inputs up to 3: enough drive that a random, untrained SNN spikes and its outputs vary.
        self.x, self.y = 3 * torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


class TinyData:
    """The two loaders compute_signals needs."""

    def __init__(self, n_audit=40, n_population=24, batch_size=16):
        self.audit, self.population, self.batch_size = Indexed(n_audit, 1), Indexed(n_population, 2), batch_size

    def audit_dataloader(self, positions=None):
        return DataLoader(self.audit, batch_size=self.batch_size)

    def population_dataloader(self):
        return DataLoader(self.population, batch_size=self.batch_size)


def snn(seed=0, **kw):
    torch.manual_seed(seed)
    return Classifier(kind="snn", T=T, width=0.25, **kw).eval()


@pytest.mark.parametrize("strategy", ["plain", input_dropout(0.2, 2, per_timestep=True)], ids=["plain", "dropout_pt"])
def test_prefix_means_equal_a_run_with_t_steps(strategy):
    model, loader = snn(), DataLoader(Indexed(30, 0), batch_size=8)
    by_t = query_signals_by_latency(model, loader, strategy, range(1, T + 1), seed=3)
    assert model.T == T and list(by_t) == [1, 2, 3, 4]  # T restored after the pass
    for t in range(1, T + 1):
        model.T = t
        want = query_signals(model, loader, strategy, seed=3)
        assert set(by_t[t]) == set(want)
        for key, value in want.items():
            torch.testing.assert_close(by_t[t][key], value, rtol=1e-6, atol=1e-6, msg=f"{key} at t={t}")
    model.T = T
    # not constant: the comparison above compares something
    assert by_t[T]["probability"].std() > 1e-3


def test_scores_at_full_T_equal_the_plain_scores_of_the_full_T_model():
    dm = TinyData()
    models = [snn(seed) for seed in range(3)]  # target, two references
    by_t = [compute_signals_by_latency(m, dm, "plain", [1, 2, T]) for m in models]
    plain = [compute_signals(snn(seed), dm, "plain") for seed in range(3)]  # fresh models at their own T
    g = torch.Generator().manual_seed(0)
    ref_in = torch.rand(1, 40, generator=g) < 0.5
    ref_in = torch.cat([ref_in, ~ref_in])
    is_member = torch.rand(40, generator=g) < 0.5
    for key, value in plain[0].items():
        torch.testing.assert_close(by_t[0][T][key], value, rtol=0, atol=0)
    kw = dict(rmia_offline_a=0.3, lira_fix_variance=True)
    full = score_attacks(list(ATTACKS), by_t[0][T], [s[T] for s in by_t[1:]], ref_in, **kw)
    want = score_attacks(list(ATTACKS), plain[0], plain[1:], ref_in, **kw)
    for name in ATTACKS:
        torch.testing.assert_close(full[name], want[name])
        assert roc_metrics(full[name], is_member)["auc"] == roc_metrics(want[name], is_member)["auc"]
    # and every t <= T equals the model run with T = t, attack scores included
    for t in (1, 2):
        at_t = []
        for seed in range(3):
            m = snn(seed)
            m.T = t
            at_t.append(compute_signals(m, dm, "plain"))
        got = score_attacks(list(ATTACKS), by_t[0][t], [s[t] for s in by_t[1:]], ref_in, **kw)
        want = score_attacks(list(ATTACKS), at_t[0], at_t[1:], ref_in, **kw)
        for name in ATTACKS:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_one_forward_pass_serves_every_latency():
    model, loader = snn(), DataLoader(Indexed(30, 0), batch_size=8)  # 4 batches
    calls, inner = [], model.forward_steps

    def counting(x):
        calls.append(model.T)
        return inner(x)

    model.forward_steps = counting
    query_signals_by_latency(model, loader, "plain", [1, 3, 2])
    assert calls == [3] * 4  # one call per batch, at T = max(latencies)
    calls.clear()
    query_signals_by_latency(model, loader, "flip", [1, 2, 4])
    assert calls == [4] * 8  # one call per batch and query


def test_sharded_latency_queries_merge_to_the_single_pass():
    """What query_split_by_latency does under DDP, ranks played in turn: each rank's shard
    (DistributedSampler pads 30 samples to 3 x 11 by repeating) per t, merged per t."""
    model, loader = snn(), DataLoader(Indexed(30, 0), batch_size=8)
    whole = query_signals_by_latency(model, loader, "plain", [1, 3], num_samples=30)
    shards = [{t: pack_shard(s) for t, s in query_signals_by_latency(
        model, shard_loader(loader, rank, 3), "plain", [1, 3], num_samples=30, allow_missing=True).items()}
        for rank in range(3)]
    for t in (1, 3):
        merged = merge_shards([shard[t] for shard in shards], 30)
        assert set(merged) == set(whole[t])
        for key, value in whole[t].items():
            torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6)


def test_ann_and_bad_latencies_are_refused():
    torch.manual_seed(0)
    ann = Classifier(kind="ann", width=0.25)
    loader = DataLoader(Indexed(8, 0), batch_size=8)
    with pytest.raises(ValueError, match="needs an SNN"):
        query_signals_by_latency(ann, loader, "plain", [1, 2])
    for bad in ([], [0, 1], [1.5], None):
        with pytest.raises(ValueError, match="latencies"):
            query_signals_by_latency(snn(), loader, "plain", bad)


def test_audit_latencies_end_to_end_one_pass_plot_report_and_cache(tmp_path, monkeypatch, capsys):
    rd = tmp_path / "run"
    small = ["--data.num_references", "2", "--data.audit_size", "400", "--model.width", "0.25", "--model.T", "2"]
    assert run.main(["fit", "--run_dir", str(rd), *small, "--trainer.max_epochs", "1", *QUIET]) == 0
    dm = MembershipDataModule(num_references=2, audit_size=400, run_dir=str(rd))
    dm.setup()
    batches = len(dm.audit_dataloader()) + len(dm.population_dataloader())

    calls, inner = [], Classifier.forward_steps

    def counting(self, x):
        calls.append(self.T)
        return inner(self, x)

    monkeypatch.setattr(Classifier, "forward_steps", counting)
    # fit cached the target's final signals too; without them it misses both latencies, which
    # is the one-pass case this test is about
    for p in (rd / "model_0" / "signals").glob("*"):
        p.unlink()
    args = ["audit", "--run_dir", str(rd), *small, "--attacks", "[attack_p, rmia_offline]", "--latencies", "[1, 2]", *QUIET]
    assert run.main(args) == 0
    # fit cached the references at their trained T = 2; they miss T = 1 only (one run at T = 1);
    # the target misses both and runs once at T = 2 (one run per latency would add a T = 1 pass).
    assert Counter(calls) == {1: 2 * batches, 2: batches}
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert set(report["attacks"]) == {"attack_p", "rmia_offline", "attack_p@T1", "rmia_offline@T1"}
    assert report["settings"]["signal_cache"] == {"hits": 2, "misses": 4}
    lat = report["latency"]
    assert set(lat) == {"attack_p", "rmia_offline"}
    for name, series in lat.items():
        assert series["t"] == [1, 2]
        assert series["auc"] == [report["attacks"][f"{name}@T1"]["auc"], report["attacks"][name]["auc"]]
        assert series["tpr@1%fpr"][1] == report["attacks"][name]["tpr@1%fpr"]
        assert "tpr@0.1%fpr" not in series  # this audit's non-members cannot measure it
    assert (rd / "audit" / "latency.png").stat().st_size > 5_000
    assert "latency.png" in (rd / "audit" / "report.md").read_text()

    calls.clear()
    assert run.main(args) == 0  # every (model, latency) entry is cached now: no forward pass
    again = json.loads((rd / "audit" / "report.json").read_text())
    assert again["settings"]["signal_cache"] == {"hits": 6} and calls == []
    assert again["attacks"] == report["attacks"]

    # a single latency hits the entries the one-pass run wrote; no latency plot for one t
    assert run.main([*args[:-len(QUIET) - 2], "--latencies", "[1]", *QUIET]) == 0
    single = json.loads((rd / "audit" / "report.json").read_text())
    assert single["settings"]["signal_cache"] == {"hits": 3} and calls == []
    assert "latency" not in single and not (rd / "audit" / "latency.png").exists()

    # every model as the target: each latency series also carries the mean over the targets
    # and its interval at every t, the same numbers as the report's across-targets table
    # (with each target's complement among its references, so that offline RMIA runs for all
    # three with K = 2)
    assert run.main([*args[:-len(QUIET)], "--targets", "all", "--exclude_complement", "false", *QUIET]) == 0
    rotated = json.loads((rd / "audit" / "report.json").read_text())
    assert calls == [] and rotated["latency"]["rmia_offline"]["auc"] == report["latency"]["rmia_offline"]["auc"]
    assert rotated["settings"]["exclude_complement"] is False
    for name, series in rotated["latency"].items():
        across = series["across_targets"]
        for i, key in enumerate([f"{name}@T1", name]):
            row = rotated["across_targets"][key]["auc"]
            assert across["auc"]["mean"][i] == row["mean"] and across["auc"]["ci"][i] == row["ci"]
            assert across["n"] <= row["n"]
    assert rotated["latency"]["attack_p"]["across_targets"]["n"] == 3  # Attack-P needs no reference
    assert rotated["across_targets"]["attack_p"]["auc"]["ci"] is not None
    assert "mean over the targets" in (rd / "audit" / "report.md").read_text()
    assert (rd / "audit" / "latency.png").stat().st_size > 5_000

    # the default: reference 1's complement (model 2, trained on exactly its non-members) is
    # not among its references, and 2's not among 2's; model 0 keeps both
    assert run.main([*args[:-len(QUIET)], "--targets", "all", *QUIET]) == 0
    excl = json.loads((rd / "audit" / "report.json").read_text())
    assert calls == [] and excl["settings"]["exclude_complement"] is True
    assert {m: t["references"] for m, t in excl["targets"].items()} == {"0": [1, 2], "1": [0], "2": [0]}
    assert excl["attacks"] == rotated["attacks"]  # model 0 has no complement: the same audit
    for m in ("1", "2"):  # Attack-P uses no reference: the same numbers; with model 0 alone, no offline RMIA
        assert excl["targets"][m]["attacks"]["attack_p"] == rotated["targets"][m]["attacks"]["attack_p"]
        assert "rmia_offline" not in excl["targets"][m]["attacks"]
    # the main target's complement among the targets: its signals are read for the rotation
    # (it is a reference of every other target), and each target gets the references it gets
    # under --targets all
    assert run.main([*args[:-len(QUIET)], "--targets", "[1, 2]", *QUIET]) == 0
    pair = json.loads((rd / "audit" / "report.json").read_text())
    assert calls == [] and pair["settings"]["target_index"] == 1 and pair["settings"]["references"] == [0]
    assert {m: t["references"] for m, t in pair["targets"].items()} == {"1": [0], "2": [0]}
    for m in ("1", "2"):
        assert pair["targets"][m]["attacks"] == excl["targets"][m]["attacks"]
