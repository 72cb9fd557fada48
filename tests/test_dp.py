"""DP-SGD (model.dp, lightning_modules/privacy.py): the per-sample gradients that the DP step
clips, clipping, the noise reaching the model, a DP fit with per-epoch epsilon and the report's
DP facts, resume with the accountant's state, bad values. (GroupNorm's stem computed once per
image: tests/test_snn_speed_equivalence.py.)"""

import csv
import json
import types
from pathlib import Path

import lightning as L
import pytest
import torch
from opacus.accountants import create_accountant
from opacus.data_loader import DPDataLoader
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import run
from core.errors import ConfigError
from datamodules import MembershipDataModule
from lightning_modules import Classifier
from lightning_modules.conversion import initialise
from lightning_modules.privacy import check_trainer

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
DP = {"noise_multiplier": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digits(n: int):
    d = load_digits()
    return torch.tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target[:n])


def dp_optimizer(model: Classifier):
    """The DP optimizer the Classifier builds in training (here without a trainer)."""
    x, y = digits(64)
    loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(x, y), batch_size=16))
    return model.private.optimizer(torch.optim.SGD(model.parameters(), lr=0.1), loader, planned_steps=10)


def per_sample_by_hooks(model: Classifier, x, y) -> torch.Tensor:
    """[B, P]: what DPOptimizer clips, one row per sample (every parameter, flattened)."""
    opt = dp_optimizer(model)
    opt.zero_grad()
    model.train()
    torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()  # as training_step under DP
    return torch.cat([g.reshape(len(x), -1) for g in opt.grad_samples], dim=1)


def one_at_a_time(model: Classifier, x, y) -> torch.Tensor:
    """[B, P]: each sample's gradient from its own backward pass, without any hook."""
    model.private.hooks.disable_hooks()
    rows = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.private.hooks.enable_hooks()
    return torch.stack(rows)


@pytest.fixture(scope="module")
def tiny_ann_checkpoint(tmp_path_factory):
    """A width-0.25 GroupNorm ANN after a few steps on digits, saved by Lightning."""
    tmp = tmp_path_factory.mktemp("ann")
    L.seed_everything(0)
    x, y = digits(256)
    ann = Classifier(kind="ann", width=0.25, norm="group")
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp)
    loader = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=64)
    trainer.fit(ann, loader)
    trainer.save_checkpoint(tmp / "ann.ckpt")
    return tmp / "ann.ckpt", loader


def build(kind: str, ckpt=None) -> Classifier:
    torch.manual_seed(0)
    if kind == "ann":
        return Classifier(kind="ann", width=0.25, dp=DP)
    if kind == "snn_lif":
        return Classifier(kind="snn", neuron="lif", T=4, width=0.25, dp=DP)
    path, loader = ckpt
    snn = Classifier(kind="snn", neuron="if", init="converted", init_from=str(path), T=4, width=0.25, dp=DP)
    initialise(snn, loader)
    return snn


@pytest.mark.parametrize("kind", ["ann", "snn_lif", "snn_converted_if"])
def test_per_sample_gradients_equal_separate_backward_passes(kind, tiny_ann_checkpoint):
    """For the SNN a sample's gradient is that of its own loss through all T steps: rows of the
    [T*B] folded layers are summed per sample, not clipped one by one."""
    model = build(kind, tiny_ann_checkpoint)
    assert model.hparams.norm == "group"
    x, y = digits(12)
    hooked, separate = per_sample_by_hooks(model, x, y), one_at_a_time(model, x, y)
    assert hooked.shape == separate.shape == (12, sum(p.numel() for p in model.parameters()))
    assert separate.norm(dim=1).min() > 0  # every sample has a gradient to compare
    rel = (hooked - separate).norm(dim=1) / separate.norm(dim=1)
    assert rel.max() <= 1e-5, rel
    # a converted model's init used the training data outside DP-SGD: its facts say so
    assert ("outside the accounting" in model.dp_facts()["scope"]) == (kind == "snn_converted_if")


def test_clipped_per_sample_gradients_are_at_most_max_grad_norm():
    model = build("snn_lif")
    x, y = digits(12)
    raw = one_at_a_time(model, x, y)
    norms = raw.norm(dim=1)
    clip = float(norms.median())  # half the samples are clipped, half pass unchanged
    opt = dp_optimizer(model)
    opt.max_grad_norm = clip
    model.train()
    for i in range(len(x)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        opt.clip_and_accumulate()  # the DP step's clipping, on a batch of one: summed_grad is the clipped gradient
        clipped = torch.cat([p.summed_grad.flatten() for p in opt.params])
        assert clipped.norm() <= clip * (1 + 1e-6)
        expected = raw[i] * min(1.0, clip / float(norms[i]))  # same direction, scaled down only when too long
        torch.testing.assert_close(clipped, expected, rtol=1e-4, atol=1e-7)
    assert (norms > clip).any() and (norms < clip).any()


def fit_digits(tmp_path, epochs: int, **model_kwargs) -> tuple[float, Classifier]:
    """Population accuracy of a model trained on the target's half of digits (no references)."""
    L.seed_everything(0, verbose=False)
    dm = MembershipDataModule(num_references=0, run_dir=str(tmp_path / "plan"))
    model = Classifier(input_shape=dm.input_shape, num_classes=dm.num_classes, normalization=dm.normalization,
                       **model_kwargs)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    return trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"], model


def test_the_noise_reaches_the_update(tmp_path):
    """Opacus' Lightning example once trained without privacy: its noise never reached the
    model. Here a small noise multiplier learns digits and a huge one does not, all else equal;
    the accountant counted every step of the loop."""
    kwargs = dict(kind="ann", width=0.25, optimizer="sgd", lr=0.5)
    quiet, quiet_model = fit_digits(tmp_path, 5, dp={**DP, "noise_multiplier": 0.5}, **kwargs)
    loud, loud_model = fit_digits(tmp_path, 5, dp={**DP, "noise_multiplier": 1000.0}, **kwargs)
    assert quiet > 0.6 and loud < 0.3, (quiet, loud)
    assert quiet_model.private.steps == quiet_model.trainer.global_step == 5 * round(1 / quiet_model.private.sample_rate)
    assert loud_model.private.epsilon() < quiet_model.private.epsilon()


def test_dp_training_refuses_a_loader_without_poisson_sampling(tmp_path):
    model = Classifier(kind="ann", width=0.25, dp=DP)
    x, y = digits(64)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="Poisson sampling"):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))


# -- run.py ---------------------------------------------------------------------------------------
def fit(rd, *flags):
    return run.main(["fit", "--run_dir", str(rd), *QUIET, *flags])


def rows(rd, index=0):
    with open(Path(rd) / f"model_{index}" / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def epsilon_per_epoch(rd, index=0) -> dict[int, float]:
    return {int(r["epoch"]): float(r["dp/epsilon"]) for r in rows(rd, index) if r.get("dp/epsilon")}


def accounted_epsilon(noise_multiplier, sample_rate, steps, delta) -> float:
    """Epsilon from Opacus' RDP accountant for `steps` steps, computed here independently of the run."""
    accountant = create_accountant("rdp")
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return accountant.get_epsilon(delta=delta)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    """An SNN target (T = 2) and K = 2 references, all DP at epsilon 1, 3 epochs on digits."""
    rd = tmp_path_factory.mktemp("dp") / "run"
    assert fit(rd, "--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: 1.0}", "--data.num_references", "2",
               "--trainer.max_epochs", "3", "--model.T", "2", "--model.width", "0.5",
               "--model.optimizer", "sgd", "--model.lr", "0.5") == 0
    return rd


def test_dp_fit_trains_audits_every_epoch_and_logs_epsilon(dp_run):
    rd = dp_run
    done = json.loads((rd / "model_0" / "done.json").read_text())
    dp = done["dp"]
    assert done["hparams"]["norm"] == "group" and done["epochs"] == 3 and dp["scope"] == "all training"
    assert dp["target_epsilon"] == 1 and dp["delta"] == 1e-5 and dp["max_grad_norm"] == 1.0
    assert 0 < dp["epsilon"] <= 1  # the accountant's epsilon after training, at most the target
    steps_per_epoch = round(1 / dp["sample_rate"])  # the Poisson loader makes 1 / q steps per epoch
    assert dp["steps"] == 3 * steps_per_epoch
    assert dp["epsilon"] == pytest.approx(accounted_epsilon(dp["noise_multiplier"], dp["sample_rate"], dp["steps"],
                                                            dp["delta"]), rel=1e-9)
    eps = epsilon_per_epoch(rd)
    assert sorted(eps) == [0, 1, 2] and eps[0] < eps[1] < eps[2] == pytest.approx(dp["epsilon"], rel=1e-6)
    audited = {int(r["epoch"]) for r in rows(rd) if r.get("attack/rmia_offline/auc")}
    assert audited == {0, 1, 2}
    losses = [float(r["train/loss"]) for r in rows(rd) if r.get("train/loss")]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[2] < losses[0]  # DP-SGD at epsilon 1 still learns: the training loss falls over the 3 epochs
    for k in (1, 2):  # the references are DP too, by default
        ref = json.loads((rd / f"model_{k}" / "done.json").read_text())["dp"]
        assert ref["target_epsilon"] == 1 and ref["epsilon"] <= 1


def test_dp_report_states_epsilon_delta_noise_sampling_rate_and_steps(dp_run):
    rd = dp_run
    report = json.loads((rd / "audit" / "report.json").read_text())
    done = json.loads((rd / "model_0" / "done.json").read_text())
    assert report["target"]["dp"] == done["dp"]
    assert {"epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant"} <= set(report["target"]["dp"])
    eps = epsilon_per_epoch(rd)
    assert [h["dp_epsilon"] for h in report["history"]] == pytest.approx([eps[0], eps[1], eps[2]], rel=1e-6)
    md = (rd / "audit" / "report.md").read_text()
    assert "Trained with DP-SGD: epsilon" in md and f"{done['dp']['steps']} steps" in md
    # run.py audit reads the same facts from done.json
    assert run.main(["audit", "--run_dir", str(rd), "--data.num_references", "2", *QUIET,
                     "--attacks", "[attack_p, rmia_offline]"]) == 0
    assert json.loads((rd / "audit" / "report.json").read_text())["target"]["dp"] == done["dp"]


def test_references_without_dp(tmp_path):
    rd = tmp_path / "run"
    assert fit(rd, "--model.dp", "{noise_multiplier: 1.0, delta: 1e-5, max_grad_norm: 1.0}", "--references",
               "{dp: null}", "--data.num_references", "2", "--trainer.max_epochs", "1", "--model.kind", "ann",
               "--model.width", "0.25") == 0
    target = json.loads((rd / "model_0" / "done.json").read_text())
    assert target["dp"]["noise_multiplier"] == 1.0 and target["dp"]["target_epsilon"] is None
    for k in (1, 2):
        ref = json.loads((rd / f"model_{k}" / "done.json").read_text())
        assert ref["dp"] is None and ref["hparams"]["norm"] == "group"  # same network, trained without DP
        assert not any(r.get("dp/epsilon") for r in rows(rd, k))


def test_resume_continues_the_accountant(tmp_path):
    rd = tmp_path / "run"
    flags = ["--model.dp", "{epsilon: 2, delta: 1e-5, max_grad_norm: 1.0}", "--data.num_references", "0",
             "--trainer.max_epochs", "3", "--model.kind", "ann", "--model.width", "0.25"]
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(rd, *flags, "--trainer.callbacks+=helpers.Interrupt", "--trainer.callbacks.epoch", "1")
    saved = torch.load(rd / "model_0" / "checkpoints" / "last.ckpt", weights_only=True)["dp"]
    (sigma, q, steps_saved), = saved["history"]
    assert steps_saved == round(1 / q)  # one epoch's steps, in the checkpoint of epoch 0
    assert not (rd / "model_0" / "done.json").exists()
    assert fit(rd, *flags) == 0
    dp = json.loads((rd / "model_0" / "done.json").read_text())["dp"]
    assert dp["steps"] == 3 * steps_saved and dp["noise_multiplier"] == sigma  # continued, not restarted
    assert dp["epsilon"] == pytest.approx(accounted_epsilon(sigma, q, 3 * steps_saved, 1e-5), rel=1e-9)
    assert dp["epsilon"] <= 2
    eps = epsilon_per_epoch(rd)  # the resumed process logged epochs 1 and 2: two and three epochs' steps
    assert eps[1] == pytest.approx(accounted_epsilon(sigma, q, 2 * steps_saved, 1e-5), rel=1e-6)
    assert eps[2] == pytest.approx(dp["epsilon"], rel=1e-6)


def test_resume_refuses_to_switch_dp_on_or_off(tmp_path, capsys):
    rd = tmp_path / "run"
    flags = ["--data.num_references", "0", "--trainer.max_epochs", "2", "--model.kind", "ann", "--model.width", "0.25",
             "--model.norm", "group"]
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(rd, *flags, "--trainer.callbacks+=helpers.Interrupt", "--trainer.callbacks.epoch", "1")
    assert fit(rd, *flags, "--model.dp", "{epsilon: 2, delta: 1e-5, max_grad_norm: 1.0}") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # the resume check names every model setting that differs from the checkpoint's: here model.dp
    assert last.startswith("error: checkpoint ") and "model.dp: checkpoint has None" in last, last


def test_fp16_loss_scaling_is_refused():
    """16-mixed scales the loss, so the per-sample gradients, before clipping. (Lightning turns
    16-mixed into bf16-mixed on a CPU, so a run cannot reach this here.)"""
    trainer = types.SimpleNamespace(world_size=1, accumulate_grad_batches=1, gradient_clip_val=None, precision="16-mixed")
    with pytest.raises(ConfigError, match="trainer.precision='16-mixed' is not allowed with model.dp"):
        check_trainer({"epsilon": 1}, trainer)
    check_trainer({"epsilon": 1}, types.SimpleNamespace(**{**vars(trainer), "precision": "bf16-mixed"}))  # no error


@pytest.mark.parametrize("flags, key", [
    (["--model.dp", "{epsilon: 0, delta: 1e-5, max_grad_norm: 1.0}"], "model.dp.epsilon=0"),
    (["--model.dp", "{epsilon: -1, delta: 1e-5, max_grad_norm: 1.0}"], "model.dp.epsilon=-1"),
    (["--model.dp", "{noise_multiplier: 0, delta: 1e-5, max_grad_norm: 1.0}"], "model.dp.noise_multiplier=0"),
    (["--model.dp", "{epsilon: 1, delta: 0, max_grad_norm: 1.0}"], "model.dp.delta=0"),
    (["--model.dp", "{epsilon: 1, delta: 1, max_grad_norm: 1.0}"], "model.dp.delta=1"),
    (["--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: 0}"], "model.dp.max_grad_norm=0"),
    (["--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: -2}"], "model.dp.max_grad_norm=-2"),
    (["--model.dp", "{epsilon: 1, noise_multiplier: 1, delta: 1e-5, max_grad_norm: 1}"], "not both"),
    (["--model.dp", "{delta: 1e-5, max_grad_norm: 1}"], "not neither"),
    (["--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: 1, eps: 3}"], "unknown key(s) ['eps']"),
    (["--model.dp", "{epsilon: 1, max_grad_norm: 1}"], "model.dp.delta is missing"),
    (["--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: 1, accountant: gdp}"], "model.dp.accountant='gdp'"),
    (["--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: 1}", "--model.norm", "batch"], "model.norm='batch'"),
    (["--model.norm", "layer"], "model.norm='layer'"),
    (["--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: 1}", "--config", "configs/trainer/ddp_cpu.yaml"],
     "model.dp is not supported with 2 processes"),
    (["--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: 1}", "--trainer.accumulate_grad_batches", "2"],
     "trainer.accumulate_grad_batches=2"),
    (["--model.dp", "{epsilon: 1, delta: 1e-5, max_grad_norm: 1}", "--trainer.gradient_clip_val", "0.5"],
     "trainer.gradient_clip_val=0.5"),

])
def test_bad_dp_values_end_in_one_line_and_write_nothing(tmp_path, capsys, flags, key):
    assert run.main(["fit", "--run_dir", str(tmp_path / "r"), *QUIET, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ") and key in err[-1], err
    assert not (tmp_path / "r").exists()


def test_dp_on_a_users_network_with_batchnorm_needs_fix_modules(capsys):
    """A user's network is not built by model.norm: the refusal names model.dp.fix_modules, and
    with it Opacus' ModuleValidator.fix replaces the BatchNorm, says so, and the DP hooks attach."""
    net = {"class_path": "tests.user_nets.BatchNormMLP", "init_args": {"hidden": 16}}
    with pytest.raises(ConfigError, match="model.dp.fix_modules=true") as err:
        Classifier(kind="ann", net=net, dp=DP)
    assert "\n" not in str(err.value) and "model.norm" not in str(err.value)
    model = Classifier(kind="ann", net=net, dp={**DP, "fix_modules": True})
    assert "replaced 1 module(s): net.2 (BatchNorm1d -> GroupNorm)" in capsys.readouterr().err
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    with pytest.raises(ConfigError, match="model.dp.fix_modules='yes' is not allowed"):
        Classifier(kind="ann", net=net, dp={**DP, "fix_modules": "yes"})
