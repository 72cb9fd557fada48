"""Networks of your own (`model.net`): the contract check at build time, the tool's state
reset, reload from a checkpoint, the example config end to end, and the refusal of
latency audits for an SNN that returns [B, classes] only. The test networks are in
tests/user_nets.py (importable as user_nets.<Name>)."""

import json

import lightning as L
import pytest
import torch

import run
from attacks import query_signals_by_latency
from audit.signals import compute_signals
from core.errors import ConfigError
from lightning_modules import Classifier
from training.cli import ROOT

EXAMPLE = ROOT / "examples" / "my_snn.yaml"


def spec(class_path, **init_args):
    return {"class_path": class_path, "init_args": init_args}


def digits_like(n=32, shape=(1, 8, 8), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.rand((n, *shape), generator=g),
                                          torch.randint(0, classes, (n,), generator=g), torch.arange(n))


@pytest.mark.parametrize("kind, class_path, steps", [
    ("ann", "user_nets.MLP", False),
    ("snn", "examples.my_snn.MySNN", True),  # [T, B, classes]: a readout per step
    ("snn", "user_nets.MeanSNN", False),  # [B, classes]: reads out over time itself
])
def test_a_good_network_passes_and_trains(kind, class_path, steps):
    torch.manual_seed(0)
    model = Classifier(kind=kind, net=spec(class_path), T=3, input_shape=(1, 8, 8), num_classes=10)
    assert model.step_readout is steps
    x = torch.rand(5, 1, 8, 8)
    logits = model(x)
    assert logits.shape == (5, 10)
    torch.nn.functional.cross_entropy(logits, torch.arange(5)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    if steps:
        model.eval()
        with torch.no_grad():
            out = model.forward_steps(x)
            assert out.shape == (3, 5, 10) and torch.allclose(out.mean(0), model(x))


def test_the_tool_sets_multi_step_mode_and_resets_spikingjelly_state():
    from spikingjelly.activation_based import neuron

    torch.manual_seed(0)
    model = Classifier(kind="snn", net=spec("examples.my_snn.MySNN", channels=4), T=3).eval()
    lifs = [m for m in model.net.modules() if isinstance(m, neuron.LIFNode)]
    assert lifs and all(m.step_mode == "m" for m in lifs)  # MySNN builds them single-step
    x, other = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        first = model(x)
        model(other)  # leaves membrane potential behind unless the tool resets it
        assert isinstance(lifs[0].v, torch.Tensor)
        assert torch.equal(model(x), first)


def test_num_classes_and_input_shape_come_from_the_data_unless_given():
    model = Classifier(kind="ann", net=spec("user_nets.MLP", hidden=8), num_classes=4, input_shape=(3, 6, 6))
    assert model.net.net[1].in_features == 3 * 6 * 6 and model(torch.rand(2, 3, 6, 6)).shape == (2, 4)
    # the stored spec is what the user wrote, not the filled-in arguments
    assert model.hparams.net == {"class_path": "user_nets.MLP", "init_args": {"hidden": 8}}


@pytest.mark.parametrize("kind, net, expected", [
    ("ann", spec("user_nets.WrongClasses"), "7 outputs per sample, but the data has 10 classes"),
    ("ann", spec("user_nets.Flat"), "returned shape [2] for a batch of B=2; expected [B, classes] = [2, 10]"),
    ("snn", spec("user_nets.BatchFirst"), "expected [T, B, classes] = [4, 2, 10] or [B, classes] = [2, 10]"),
    ("ann", spec("user_nets.SpikesAndMembrane"), "returned a tuple; expected one tensor of logits"),
    ("ann", spec("user_nets.Leaky"), "different logits for the same input queried twice"),
    ("ann", spec("user_nets.Frozen"), "do not depend on any trainable parameter"),
    ("ann", spec("user_nets.NoParameters"), "has no trainable parameters"),
    ("ann", spec("user_nets.Broken"), "fails on an input of shape [2, 1, 8, 8]"),
    ("ann", spec("examples.my_snn.MySNN"), "holds spiking neurons (spikingjelly memory modules); expected an ANN"),
    ("ann", spec("user_nets.not_a_module"), "is a function but not a torch.nn.Module subclass"),
    ("ann", spec("no_such_package.Net"), "does not import (ModuleNotFoundError"),
    ("ann", spec("user_nets.NoSuchNet"), "module user_nets has no attribute 'NoSuchNet'"),
    ("ann", spec("MLP"), "expected a dotted path package.module.Class"),
    ("ann", spec("user_nets.MLP", hiden=3), "got an unexpected keyword argument 'hiden'"),
    ("ann", spec("user_nets.MLP", hidden=[torch.zeros(1)]), "init_args hold plain data"),
    ("ann", {"class_path": "user_nets.MLP", "init_arg": {}}, "expected {class_path: package.module.Class"),
    ("ann", "user_nets.MLP", "expected {class_path: package.module.Class"),
])
def test_each_broken_contract_is_refused_in_one_line(kind, net, expected):
    with pytest.raises(ConfigError) as err:
        Classifier(kind=kind, net=net, T=4, num_classes=10, input_shape=(1, 8, 8))
    message = str(err.value)
    assert "model.net" in message and expected in message and "\n" not in message


def test_conversion_is_refused_for_a_network_of_your_own():
    with pytest.raises(ConfigError, match="model.init='converted' is not allowed with model.net"):
        Classifier(kind="snn", neuron="if", init="converted", init_from="x.ckpt", net=spec("examples.my_snn.MySNN"))


def test_a_broken_network_stops_run_py_before_anything_is_written(tmp_path, capsys):
    rd = tmp_path / "r"
    net = ["--model.kind", "ann", "--model.net", "{class_path: user_nets.Leaky}"]
    assert run.main(["fit", "--run_dir", str(rd), *net]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model.net=user_nets.Leaky (model.kind=ann)") and "queried twice" in err[-1]
    assert not rd.exists()


def test_reload_from_checkpoint_rebuilds_the_network_from_plain_hparams(tmp_path):
    L.seed_everything(0)
    model = Classifier(kind="snn", T=2, net=spec("examples.my_snn.MySNN", channels=4), lr=0.01)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(digits_like(), batch_size=16))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]["net"]
    assert saved == {"class_path": "examples.my_snn.MySNN", "init_args": {"channels": 4}}
    x = torch.rand(3, 1, 8, 8)
    model.eval()
    again = Classifier.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu").eval()
    rebuilt, _ = Classifier.from_checkpoint(tmp_path / "m.ckpt")
    with torch.no_grad():
        assert torch.equal(again(x), model(x)) and torch.equal(rebuilt(x), model(x))
    assert type(rebuilt.net).__name__ == "MySNN" and rebuilt.step_readout


def test_an_snn_without_per_step_readout_refuses_latency_reads():
    model = Classifier(kind="snn", T=4, net=spec("user_nets.MeanSNN")).eval()
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"returns logits \[B, classes\], not a readout per time step"):
        model.forward_steps(x)
    loader = torch.utils.data.DataLoader(digits_like(8), batch_size=4)
    with pytest.raises(ValueError, match="needs a readout per time step"):
        query_signals_by_latency(model, loader, "plain", [1, 4])
    with pytest.raises(ConfigError, match="latency T=2: a model.net that returns logits"):
        compute_signals(model, None, "plain", T=2)
    assert model.T == 4 and model(x).shape == (3, 10)  # the trained T is still queried


def test_run_py_audit_refuses_latencies_for_it_up_front(tmp_path, fast_trainer_args, capsys):
    rd = tmp_path / "run"
    net = ["--model.net", "{class_path: user_nets.MeanSNN}"]
    assert run.main(["fit", "--run_dir", str(rd), *net, "--data.num_references", "0", "--trainer.max_epochs", "1",
                     "--trainer.callbacks", "[]", *fast_trainer_args]) == 0
    done = json.loads((rd / "model_0" / "done.json").read_text())
    assert done["step_readout"] is False and done["arch"] == "user_nets.MeanSNN"
    capsys.readouterr()
    assert run.main(["audit", "--run_dir", str(rd), "--data.num_references", "0", "--latencies", "[1, 4]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: latencies=[1, 4]") and "[T, B, classes]" in err[-1]
    assert not (rd / "model_0" / "signals").exists()  # refused before any query


def test_the_example_config_audits_its_network_end_to_end_on_digits(tmp_path, fast_trainer_args):
    first_line = EXAMPLE.read_text().splitlines()[0]
    assert first_line == "# python run.py fit --config examples/my_snn.yaml"
    rd = tmp_path / "run"
    small = ["--run_dir", str(rd), "--data.num_references", "2", "--trainer.max_epochs", "1", *fast_trainer_args]
    assert run.main(["fit", "--config", str(EXAMPLE), *small]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert report["target"]["arch"] == "examples.my_snn.MySNN" and report["target"]["T"] == 4
    assert set(report["attacks"]) == {"attack_p", "attack_r", "rmia_offline", "rmia_online", "lira_online",
                                      "lira_offline", "reference_ratio"}
    assert report["settings"]["references"] == [1, 2]
    for k in range(3):
        done = json.loads((rd / f"model_{k}" / "done.json").read_text())
        assert done["hparams"]["net"]["class_path"] == "examples.my_snn.MySNN" and done["step_readout"] is True
    # per-step readouts: a latency audit reads t = 1, 2 off one run at T = 2
    assert run.main(["audit", "--run_dir", str(rd), "--data.num_references", "2", "--latencies", "[1, 2]"]) == 0
    latency = json.loads((rd / "audit" / "report.json").read_text())["latency"]
    assert latency["rmia_offline"]["t"] == [1, 2]


def test_an_snntorch_network_in_the_contract():
    pytest.importorskip("snntorch", reason="snntorch is an optional extra (pip install -e '.[snntorch]')")
    torch.manual_seed(0)
    model = Classifier(kind="snn", T=3, net=spec("examples.snntorch_net.SnnTorchCNN", channels=4))
    assert model.step_readout
    x = torch.rand(4, 1, 8, 8)
    torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    assert model.net.conv.weight.grad.abs().sum() > 0  # snnTorch's surrogate gradient reaches the first layer
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    # the same network without the wrapper's reset keeps snnTorch's membrane between queries
    with pytest.raises(ConfigError, match="different logits for the same input queried twice"):
        Classifier(kind="snn", T=3, net=spec("user_nets.SnnTorchForgetful"))


def test_the_snntorch_example_trains_and_audits(tmp_path, fast_trainer_args):
    pytest.importorskip("snntorch", reason="snntorch is an optional extra (pip install -e '.[snntorch]')")
    rd = tmp_path / "run"
    assert run.main(["fit", "--config", str(ROOT / "examples" / "snntorch_net.yaml"), "--run_dir", str(rd),
                     "--data.num_references", "0", "--trainer.max_epochs", "1", *fast_trainer_args]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert report["target"]["arch"] == "examples.snntorch_net.SnnTorchCNN" and "attack_p" in report["attacks"]
