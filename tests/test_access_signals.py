"""The SNN-native access levels, engine side: the steps, spikes and membrane signals recorded
by hooks in the signal pass (attacks/hooks.py), their cache entries per level, the attacks
that read them, and the report's `access` and unavailable levels."""

import json
import shutil

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn
from torch.utils.data import DataLoader

import run
from attacks import query_signals, query_signals_by_latency, roc_metrics
from attacks.hooks import level_reasons
from audit.attacks import REGISTRY, recorded_levels
from audit.distributed import merge_shards, pack_shard, shard_loader
from audit.scoring import evaluate
from audit.settings import AuditSettings
from lightning_modules import Classifier
from lightning_modules.networks import LeanLIFNode
from test_latency import Indexed

LEVELS = ("steps", "spikes", "membrane")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class TinySNN(nn.Module):
    """Linear -> IF -> Linear -> LeanLIF (the last spiking layer) -> Linear readout per step."""

    def __init__(self, T=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(layer.Flatten(), layer.Linear(16, 12),
                                 neuron.IFNode(surrogate_function=surrogate.ATan()), layer.Linear(12, 8),
                                 LeanLIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True),
                                 layer.Linear(8, 3))
        functional.set_step_mode(self.net, "m")
        with torch.no_grad():  # enough drive that the second layer fires too
            self.net[3].weight.mul_(4)
            self.net[3].bias.fill_(0.4)
        self.T = T

    def forward_steps(self, x):
        functional.reset_net(self.net)
        return self.net(3 * x.unsqueeze(0).expand(self.T, *x.shape))

    def forward(self, x):
        return self.forward_steps(x).mean(0)


def manual(model: TinySNN, x, y):
    """spikes [2, B], membrane [4, B] and steps [T, B] by hand: IF and LIF (tau 2, hard reset to 0)."""
    lin1, lin2, lin3 = model.net[1], model.net[3], model.net[5]
    h1 = lin1(3 * x.flatten(1))
    v1, v2 = torch.zeros_like(h1), torch.zeros(x.shape[0], 8)
    n1, n2, vs, readout = 0, 0, [], []
    for _ in range(model.T):
        v1 = v1 + h1
        s1 = (v1 >= 1).float()
        v1 = v1 * (1 - s1)
        h = v2 + (lin2(s1) - v2) / 2
        s2 = (h >= 1).float()
        v2 = h * (1 - s2)
        n1, n2 = n1 + s1.sum(1), n2 + s2.sum(1)
        vs.append(v2)
        readout.append(lin3(s2))
    v, z = torch.stack(vs).double(), torch.stack(readout).double()  # [T, B, 8], [T, B, 3]
    z_true = z.gather(-1, y.expand(model.T, -1).unsqueeze(-1)).squeeze(-1)
    steps = z_true - torch.logsumexp(z.scatter(-1, y.expand(model.T, -1).unsqueeze(-1), float("-inf")), -1)
    membrane = torch.stack([z_true.mean(0), v.mean((0, 2)), v.permute(1, 0, 2).flatten(1).std(1, unbiased=False),
                            v.max(0).values.mean(1)])
    return torch.stack([n1, n2]), membrane, steps


def loader_of(n=20, seed=0, batch_size=8, shape=(1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + batch_size], y[i:i + batch_size], torch.arange(i, min(i + batch_size, n)))
            for i in range(0, n, batch_size)], x, y


def test_hooked_signals_match_a_manual_computation_and_leave_nothing_behind():
    model = TinySNN()
    loader, x, y = loader_of()
    got = query_signals(model, loader, "plain", levels=LEVELS)
    spikes, membrane, steps = manual(model, x, y)
    assert got["spikes"].shape == (1, 2, 20) and got["membrane"].shape == (1, 4, 20)
    assert got["steps"].shape == (1, 3, 20)
    assert got["spikes"].dtype == got["membrane"].dtype == got["steps"].dtype == torch.float32
    assert got["spikes"].sum() > 0 and got["spikes"][0, 1].sum() > 0  # both layers fire: a real check
    torch.testing.assert_close(got["spikes"][0], spikes.float())
    torch.testing.assert_close(got["membrane"][0], membrane.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["steps"][0], steps.float(), rtol=1e-5, atol=1e-5)
    # the levels come from the same pass: the logits are those of a pass without hooks, bit for bit
    plain = query_signals(model, loader, "plain")
    assert torch.equal(plain["rescaled_logit"], got["rescaled_logit"]) and "spikes" not in plain
    # hooks removed, store_v_seq restored (LeanLIFNode back on its fast path)
    lif = model.net[4]
    assert all(not m._forward_hooks for m in model.modules())
    assert lif.store_v_seq is False and lif._fast_path(torch.zeros(2, 2)) == "atan"


def test_levels_per_query_and_latency_from_one_pass_equal_a_shorter_run():
    model = Classifier(kind="snn", T=4, width=0.25)
    loader = DataLoader(Indexed(12, 0), batch_size=6)
    by_t = query_signals_by_latency(model, loader, "dropout:p=0.1,n=2", [2, 4], levels=LEVELS)
    assert by_t[4]["spikes"].shape[:2] == (2, sum(isinstance(m, LeanLIFNode) for m in model.modules()))
    assert by_t[2]["steps"].shape == (2, 2, 12) and by_t[4]["membrane"].shape == (2, 4, 12)
    model.T = 2
    short = query_signals(model, loader, "dropout:p=0.1,n=2", levels=LEVELS)
    assert torch.equal(by_t[2]["spikes"], short["spikes"])
    torch.testing.assert_close(by_t[2]["membrane"], short["membrane"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(by_t[2]["steps"], short["steps"], rtol=1e-4, atol=1e-5)
    assert torch.equal(by_t[4]["steps"][:, :2], by_t[2]["steps"])  # a prefix of the same readout


def test_no_level_asked_registers_no_hook(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a hook was registered")

    monkeypatch.setattr(nn.Module, "register_forward_hook", refuse)
    loader, _, _ = loader_of()
    out = query_signals(TinySNN(), loader, "plain")
    assert set(out) == {"probability", "rescaled_logit", "correct", "labels"}
    assert recorded_levels(AuditSettings().attack_objects()) == ()
    assert recorded_levels(AuditSettings(attacks="all").attack_objects()) == LEVELS


def test_an_ann_gets_active_units_and_says_which_levels_it_lacks():
    torch.manual_seed(0)
    relu_net = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3))
    loader, x, _ = loader_of()
    out = query_signals(relu_net, loader, "plain", levels=LEVELS)
    active = (relu_net[1](x.flatten(1)) > 0).sum(1).float()
    torch.testing.assert_close(out["spikes"][0, 0], active)
    assert "steps" not in out and "membrane" not in out
    assert out["unavailable"] == {"steps": "an ANN has no time steps", "membrane": "an ANN has no membrane potential"}
    bare = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert "no activation modules" in query_signals(bare, loader, "plain", levels=("spikes",))["unavailable"]["spikes"]


def test_snntorch_neurons_are_found():
    pytest.importorskip("snntorch")
    from examples.snntorch_net import SnnTorchCNN

    class Wrapped(nn.Module):
        T = 3

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = SnnTorchCNN(num_classes=3, input_shape=(1, 4, 4), channels=4)

        def forward_steps(self, x):
            return self.net(4 * x.unsqueeze(0).expand(self.T, *x.shape))

        def forward(self, x):
            return self.forward_steps(x).mean(0)

    model = Wrapped()
    loader, x, _ = loader_of()
    out = query_signals(model, loader, "plain", levels=LEVELS)
    net = model.net
    mem1, mem2, n1, n2, mems = net.lif1.reset_mem(), net.lif2.reset_mem(), 0, 0, []
    with torch.no_grad():
        for x_t in 4 * x.unsqueeze(0).expand(3, *x.shape):
            spk1, mem1 = net.lif1(nn.functional.avg_pool2d(net.conv(x_t), 2), mem1)
            spk2, mem2 = net.lif2(net.fc(spk1.flatten(1)), mem2)
            n1, n2 = n1 + spk1.flatten(1).sum(1), n2 + spk2.sum(1)
            mems.append(mem2)
    assert n1.sum() > 0
    torch.testing.assert_close(out["spikes"][0], torch.stack([n1, n2]).float())
    torch.testing.assert_close(out["membrane"][0, 1], torch.stack(mems).mean((0, 2)), rtol=1e-5, atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules())


def test_sharded_levels_merge_to_the_single_pass():
    model = Classifier(kind="snn", T=2, width=0.25)
    loader = DataLoader(Indexed(30, 0), batch_size=8)
    whole = query_signals(model, loader, "plain", num_samples=30, levels=LEVELS)
    shards = [pack_shard(query_signals(model, shard_loader(loader, rank, 3), "plain", num_samples=30,
                                       allow_missing=True, levels=LEVELS)) for rank in range(3)]
    merged = merge_shards(shards, 30)
    for key in LEVELS:
        torch.testing.assert_close(merged[key], whole[key], rtol=1e-5, atol=1e-5)


# -- a network whose spikes leak membership by construction ------------------------------------
class LookupSNN(nn.Module):
    """Recognises its own training samples by a lookup and fires more in one LIF layer for them;
    its readout is the same for every input, so its output says nothing about membership."""

    def __init__(self, members: torch.Tensor, seed: int, T: int = 8):
        super().__init__()
        self.register_buffer("members", members.flatten(1))
        self.gain = 1.0 + 0.05 * torch.randn((), generator=torch.Generator().manual_seed(seed))
        self.lif = neuron.LIFNode(surrogate_function=surrogate.ATan(), step_mode="m")
        self.other = neuron.IFNode(surrogate_function=surrogate.ATan(), step_mode="m")
        self.T = T

    def forward_steps(self, x):
        functional.reset_net(self)
        flat = x.flatten(1)
        known = (torch.cdist(flat, self.members).min(1).values < 1e-6).float() if len(self.members) else 0 * flat[:, 0]
        drive = self.gain * (0.8 + 0.6 * flat[:, :6]) + 0.8 * known[:, None]  # [B, 6]
        self.lif(drive.expand(self.T, *drive.shape))
        self.other(flat[:, 6:12].expand(self.T, -1, -1))  # an activity that does not depend on membership
        return torch.tensor([1.0, 0.0, -1.0]).expand(self.T, x.shape[0], 3)

    def forward(self, x):
        return self.forward_steps(x).mean(0)


def test_spikes_attack_detects_what_the_label_cannot():
    N, K = 200, 8
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(N, 1, 4, 4, generator=g), torch.randint(0, 3, (N,), generator=g)
    half = [torch.randperm(N, generator=g) < N // 2 for _ in range(K // 2 + 1)]
    rows = [half[0]] + [r for h in half[1:] for r in (h, ~h)]  # target, then complementary reference pairs
    loader = [(x[i:i + 50], y[i:i + 50], torch.arange(i, i + 50)) for i in range(0, N, 50)]
    signals = []
    for k, row in enumerate(rows):
        s = query_signals(LookupSNN(x[row], seed=k), loader, "plain", levels=("spikes",))
        signals.append({f"audit/{key}": v for key, v in s.items() if key in ("correct", "spikes", "rescaled_logit")})
    assert signals[0]["audit/spikes"][0, 1].std() > 0  # the other layer fires too
    ref_in = torch.stack(rows[1:])
    attacks = [REGISTRY[n]() for n in ("spikes_gaussian", "spikes_classifier", "label_only")]
    got = evaluate(attacks, signals[0], signals[1:], ref_in, rows[0])
    assert got["spikes_gaussian"]["auc"] > 0.9 and got["spikes_classifier"]["auc"] > 0.9, \
        {n: m["auc"] for n, m in got.items()}
    assert 0.4 <= got["label_only"]["auc"] <= 0.6
    assert {m["access"] for m in got.values()} == {"spikes", "label"}
    # and a model with no spikes level: the attack says why instead of scoring
    skipped = {}
    no_level = [{k: v for k, v in s.items() if k != "audit/spikes"} | {"unavailable": {"spikes": "why"}}
                for s in signals]
    assert evaluate(attacks[:1], no_level[0], no_level[1:], ref_in, rows[0], skipped=skipped) == {}
    assert skipped == {"spikes_gaussian": "no spikes level: why"}
    assert roc_metrics(torch.rand(N), rows[0])["auc"] < 0.7  # the detector is not trivially true


# -- run.py audit --attacks all on finished runs ------------------------------------------------
SMALL = ["--data.num_references", "4", "--data.audit_size", "400", "--model.width", "0.25", "--model.T", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("access")
    out = {}
    for kind in ("snn", "ann"):
        rd = base / kind
        assert run.main(["fit", "--run_dir", str(rd), *SMALL, "--model.kind", kind, "--trainer.max_epochs", "1",
                         *QUIET]) == 0
        out[kind] = rd
    return out


def audit_all(rd, *extra):
    assert run.main(["audit", "--run_dir", str(rd), *SMALL, "--attacks", "all", *extra, *QUIET]) == 0
    return json.loads((rd / "audit" / "report.json").read_text())


def test_audit_all_gives_every_attack_its_access_and_caches_each_level(runs):
    rd = runs["snn"]
    report = audit_all(rd)
    assert report["settings"]["signal_cache"] == {"misses": 5}  # fit cached no level: one pass per model
    new = {"label_only", "steps_lira", "steps_rmia", "steps_gaussian", "spikes_gaussian", "spikes_classifier",
           "membrane_gaussian", "membrane_classifier"}
    assert new <= set(report["attacks"])
    for name in REGISTRY:  # one row per attack, or one line why not
        assert name in report["attacks"] or name in report["skipped"], name
    assert set(report["skipped"]) <= {"trajectory"}
    for name, row in report["attacks"].items():
        assert row["access"] == REGISTRY[name].access
    assert {row["access"] for row in report["attacks"].values()} == {"label", "confidence", "steps", "spikes",
                                                                      "membrane"}
    for level in LEVELS:
        meta = json.loads((rd / "model_1" / "signals" / f"plain__T2__seed0__{level}.json").read_text())
        assert meta["level"] == level and meta["model_index"] == 1 and "unavailable" not in meta
    again = audit_all(rd)
    assert again["settings"]["signal_cache"] == {"hits": 5}
    assert again["attacks"]["spikes_gaussian"]["auc"] == report["attacks"]["spikes_gaussian"]["auc"]
    # one level lost: that model is queried once more, everything asked in one pass
    (rd / "model_2" / "signals" / "plain__T2__seed0__membrane.json").unlink()
    assert audit_all(rd)["settings"]["signal_cache"] == {"hits": 4, "misses": 1}
    # a damaged level entry is recomputed with a warning
    path = rd / "model_1" / "signals" / "plain__T2__seed0__spikes.pt"
    torch.save({"audit/spikes": torch.zeros(1)}, path)
    with pytest.warns(UserWarning, match="damaged"):
        assert audit_all(rd)["settings"]["signal_cache"] == {"hits": 4, "misses": 1}


def test_swapped_folders_are_refused_with_level_entries(runs, capsys):
    rd = runs["snn"]
    audit_all(rd, "--attacks", "[spikes_gaussian]")
    copy = rd.parent / "swapped"
    shutil.copytree(rd, copy)
    (copy / "model_1").rename(copy / "x")
    (copy / "model_2").rename(copy / "model_1")
    (copy / "x").rename(copy / "model_2")
    assert run.main(["audit", "--run_dir", str(copy), *SMALL, "--attacks", "[spikes_gaussian]", *QUIET]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "swapped" in line, line


def test_an_ann_run_reports_the_levels_it_cannot(runs):
    rd = runs["ann"]
    report = audit_all(rd)
    for name in ("steps_lira", "steps_rmia", "steps_gaussian"):
        assert report["skipped"][name] == "no steps level: an ANN has no time steps"
    for name in ("membrane_gaussian", "membrane_classifier"):
        assert report["skipped"][name] == "no membrane level: an ANN has no membrane potential"
    assert {"label_only", "spikes_gaussian", "spikes_classifier"} <= set(report["attacks"])
    assert all("access" in row for row in report["attacks"].values())
    meta = json.loads((rd / "model_1" / "signals" / "plain__Tann__seed0__steps.json").read_text())
    assert meta["unavailable"] == "an ANN has no time steps"
    assert audit_all(rd)["settings"]["signal_cache"] == {"hits": 5}  # an unavailable level is cached too
    md = (rd / "audit" / "report.md").read_text()
    assert "steps_lira (no steps level: an ANN has no time steps)" in md


def test_level_reasons_for_a_network_without_a_step_readout():
    class MeanOnly(TinySNN):
        step_readout = False

    reasons = level_reasons(MeanOnly(), LEVELS)
    assert reasons["steps"].startswith("the network returns logits [B, classes]") and reasons["spikes"] is None
    assert level_reasons(nn.Sequential(), ["spikes"]) == \
        {"spikes": "no activation modules (nn.ReLU and kin) in the network"}


# -- users' networks --------------------------------------------------------------------------
def user_spec(class_path, **init_args):
    return {"class_path": class_path, "init_args": init_args}


@pytest.mark.parametrize("class_path, layers", [("examples.my_snn.MySNN", 2), ("examples.snntorch_net.SnnTorchCNN", 2)])
def test_the_example_networks_get_every_level(class_path, layers):
    if "snntorch" in class_path:
        pytest.importorskip("snntorch")
    torch.manual_seed(0)
    model = Classifier(kind="snn", T=2, net=user_spec(class_path, channels=4))
    out = query_signals(model, DataLoader(Indexed(10, 0), batch_size=5), "plain", levels=LEVELS)
    assert "unavailable" not in out
    assert out["spikes"].shape == (1, layers, 10) and out["steps"].shape == (1, 2, 10)
    assert out["membrane"].shape == (1, 4, 10) and bool(torch.isfinite(out["membrane"]).all())
    assert out["spikes"].sum() > 0


def test_a_user_network_without_a_step_readout_says_so():
    torch.manual_seed(0)
    model = Classifier(kind="snn", T=2, net=user_spec("user_nets.MeanSNN", hidden=8))
    out = query_signals(model, DataLoader(Indexed(10, 0), batch_size=5), "plain", levels=LEVELS)
    assert set(out["unavailable"]) == {"steps"} and out["spikes"].shape == (1, 1, 10)


def test_lean_lif_records_the_same_v_seq_as_spikingjelly():
    torch.manual_seed(0)
    x = 2 * torch.rand(5, 3, 7)
    lean = LeanLIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")
    ref = neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")
    for node in (lean, ref):
        node.store_v_seq = True
    assert lean._fast_path(x) == "atan"  # recorded on its own fast path, not spikingjelly's slow one
    assert torch.equal(lean(x), ref(x)) and lean(x).sum() > 0
    functional.reset_net(lean)
    functional.reset_net(ref)
    lean(x), ref(x)
    assert torch.equal(lean.v_seq, ref.v_seq)
    lean.store_v_seq = False
    functional.reset_net(lean)
    lean(x)
    assert lean.v_seq is None


def test_query_split_shards_and_merges_the_levels_as_ddp_ranks_would():
    """audit/signals.py's query_split with three ranks played in turn (ranks 1 and 2 hand their
    shards over first, rank 0 gathers and merges): the levels and their reasons survive."""
    from audit.signals import query_split

    class Played:
        sharded, world_size = True, 3

        def __init__(self, rank, box):
            self.rank, self.box = rank, box
            self.is_zero = rank == 0

        def gather(self, obj):
            self.box[self.rank] = obj
            return [self.box[r] for r in range(3)] if self.is_zero else None

    model = Classifier(kind="snn", T=2, width=0.25)
    loader = DataLoader(Indexed(30, 0), batch_size=8)
    whole = query_split(model, loader, "plain", levels=LEVELS)[None]
    box = {}
    assert query_split(model, loader, "plain", ranks=Played(2, box), levels=LEVELS) is None
    assert query_split(model, loader, "plain", ranks=Played(1, box), levels=LEVELS) is None
    merged = query_split(model, loader, "plain", ranks=Played(0, box), levels=LEVELS)[None]
    assert set(merged) == set(whole) == {"rescaled_logit", "correct", *LEVELS}
    for key in whole:
        torch.testing.assert_close(merged[key], whole[key], rtol=1e-5, atol=1e-5)
    ann = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10))
    box = {}
    for rank in (2, 1):
        query_split(ann, loader, "plain", ranks=Played(rank, box), levels=LEVELS)
    merged = query_split(ann, loader, "plain", ranks=Played(0, box), levels=LEVELS)[None]
    assert set(merged["unavailable"]) == {"steps", "membrane"} and merged["spikes"].shape == (1, 1, 30)


def test_the_training_callback_records_and_caches_the_levels_its_attacks_read(tmp_path):
    rd = tmp_path / "run"
    attacks = "[label_only, spikes_gaussian, membrane_classifier]"
    assert run.main(["fit", "--run_dir", str(rd), *SMALL, "--trainer.max_epochs", "1",
                     "--trainer.callbacks.attacks", attacks, *QUIET]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert {n: r["access"] for n, r in report["attacks"].items()} == \
        {"label_only": "label", "spikes_gaussian": "spikes", "membrane_classifier": "membrane"}
    for k in range(5):  # the references' levels cached when the callback queried them, the target's at the end
        assert (rd / f"model_{k}" / "signals" / "plain__T2__seed0__spikes.json").is_file()
        assert not (rd / f"model_{k}" / "signals" / "plain__T2__seed0__steps.json").exists()  # not asked
    audit_all(rd, "--attacks", attacks)
    assert json.loads((rd / "audit" / "report.json").read_text())["settings"]["signal_cache"] == {"hits": 5}


def test_spikes_of_a_scaled_if_node_count_spikes_not_their_amplitude():
    from lightning_modules.networks import ScaledIFNode

    class Scaled(TinySNN):
        def __init__(self):
            super().__init__()
            node = ScaledIFNode(surrogate_function=surrogate.ATan())
            node.threshold.fill_(0.37)  # spikes of amplitude 0.37
            self.net[2] = node
            functional.set_step_mode(self.net, "m")

    model = Scaled()
    loader, x, _ = loader_of()
    seen = []
    handle = model.net[2].register_forward_hook(lambda m, i, o: seen.append((o != 0).flatten(2).sum((0, 2))))
    out = query_signals(model, loader, "plain", levels=("spikes",))
    handle.remove()
    assert torch.equal(out["spikes"][0, 0], torch.cat(seen).float()) and out["spikes"][0, 0].sum() > 0
