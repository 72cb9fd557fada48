"""One LightningModule for both targets: an ANN, or a surrogate-gradient SNN built
from the same architecture (spikingjelly, multi-step, T time steps), or your own
network of either kind (`model.net`, user_net.py).

The module is what the attacks query black-box: `model(x)` returns logits [B, classes].
For an SNN, x may be [B, C, H, W] (encoded here, repeated over T steps for direct
encoding) or an already time-expanded [T, B, C, H, W] (per-time-step query masks);
the logits are the readout averaged over the T steps, and `forward_steps` gives all T.

Event data (`input_frames` set by the data module) is another input: x is [B, F, C, H, W],
F frames of event counts per sample. An SNN's step t is frame t, as is: no normalisation,
no repetition, no Poisson coding (`frames_to_steps`). An ANN gets the frames summed
over time: every event once, so its input does not depend on how many frames there are.
"""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from spikingjelly.activation_based import functional, layer
from torchmetrics.classification import MulticlassAccuracy

from core.errors import ConfigError, check_choice, check_int, check_number, first_line
from core.faults import dp_fault
from core.rundir import read_checkpoint
from .conversion import INITS, check_convert_mode, initialise
from .networks import ARCHS, NEURONS, NORMS, SURROGATES, Normalize, build_network
from .privacy import PrivateTraining, check_dp, check_trainer, fix_modules
from .user_net import build_user_net, check_contract

KINDS = ("ann", "snn")
ENCODINGS = ("direct", "poisson")
OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("cosine", "none")
# What a converted DP model's epsilon does not cover: its init used the training data outside DP-SGD.
DP_SCOPE_CONVERTED = ("fine-tuning only: the ANN it was converted from and the thresholds calibrated on training "
                      "batches are outside the accounting")


class Classifier(L.LightningModule):
    def __init__(
        self,
        kind: str = "snn",
        arch: str = "cnn",
        net: dict | None = None,
        T: int = 4,
        neuron: str = "lif",
        surrogate: str = "atan",
        encoding: str = "direct",
        tau: float = 2.0,
        v_threshold: float = 1.0,
        width: float = 1.0,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 8, 8),
        normalization: tuple[list[float], list[float]] | None = None,
        optimizer: str = "adam",
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        init: str = "scratch",
        init_from: str | None = None,
        convert_mode: str = "max",
        convert_batches: int = 16,
        convert_v_init: float = 0.5,
        norm: str | None = None,
        dp: dict[str, Any] | None = None,
        input_frames: int | None = None,
    ):
        """
        Args:
            kind: ann (ReLU) or snn (spiking neurons, surrogate gradients).
            arch: cnn, vgg16, resnet18 or resnet34.
            net: your own network instead of arch: {class_path: package.module.Class, init_args:
                {...}}, any torch.nn.Module that keeps the contract of user_net.py (ANN: logits
                [B, classes]; SNN: [T, B, ...] in, [T, B, classes] or [B, classes] out). It is
                built, and checked on one small batch, whenever the model is built; neuron,
                surrogate, tau, v_threshold and width do not apply to it. A spec, not a
                module: the hyper-parameters stay plain data, so that a checkpoint reloads
                with weights_only=True.
            T: SNN time steps (latency); ignored by an ANN.
            neuron: lif or if.
            surrogate: atan or sigmoid surrogate gradient of the spike.
            encoding: direct (the analog image repeated T times) or poisson (rate-coded spikes).
            tau: LIF membrane time constant.
            v_threshold: firing threshold.
            width: channel-width multiplier (1.0 = the standard architecture).
            num_classes, input_shape, normalization: set from the data module.
            input_frames: set from the data module: None for images; for event data the frames
                per sample, which an SNN must take as its T steps (run.py links model.T to them).
            optimizer: sgd (momentum) or adam; lr, weight_decay, momentum as usual.
            scheduler: cosine (annealed over trainer.max_epochs) or none.
            init: scratch (random weights, direct surrogate-gradient training) or converted
                (an SNN, IF neurons, built from init_from when fit starts, then fine-tuned
                with surrogate gradients at this T; see conversion.py).
            init_from: for init=converted: a trained ANN checkpoint (converted with
                spikingjelly's ann2snn), or a converted SNN checkpoint trained at T - 1
                (weights and thresholds copied: the T - 1 -> T chain).
            convert_mode: per-layer threshold from the ANN's activations: max or a
                percentile such as 99.9%.
            convert_batches: training batches used to calibrate the thresholds.
            convert_v_init: initial membrane potential of the converted IF neurons, as a
                fraction of their threshold, in [0, 1): 0.5 (half-threshold start; at
                T = 1 the only setting that converts to a working network) or 0
                (spikingjelly ann2snn's start at rest).
            norm: the normalisation after each conv: batch (BatchNorm) or group (GroupNorm, per
                sample); null: group with model.dp, batch without.
            dp: DP-SGD with Opacus (lightning_modules/privacy.py): {epsilon | noise_multiplier,
                delta, max_grad_norm[, accountant: rdp | prv][, fix_modules: true][, audit_canaries: m]};
                null trains without DP. fix_modules replaces what DP-SGD cannot train in a user's
                network (BatchNorm by GroupNorm, Opacus' ModuleValidator.fix). audit_canaries adds m
                white-box gradient canaries, whose one-run bound is logged as dp/canary_eps_lb.
        """
        super().__init__()
        check_choice("model.kind", kind, KINDS)
        check_choice("model.arch", arch, ARCHS)
        check_int("model.T", T, 1)
        check_choice("model.neuron", neuron, NEURONS)
        check_choice("model.surrogate", surrogate, SURROGATES)
        check_choice("model.encoding", encoding, ENCODINGS)
        check_choice("model.optimizer", optimizer, OPTIMIZERS)
        check_choice("model.scheduler", scheduler, SCHEDULERS)
        check_choice("model.init", init, INITS)
        if init == "converted" and net is not None:
            raise ConfigError(f"model.init='converted' is not allowed with model.net={net!r}; conversion builds an SNN "
                              f"of a built-in model.arch (set model.net=null, or model.init=scratch)")
        if init == "converted":
            for key, value, need in (("model.kind", kind, "snn"), ("model.neuron", neuron, "if"),
                                     ("model.encoding", encoding, "direct")):
                if value != need:
                    raise ConfigError(f"{key}={value!r} is not allowed with model.init='converted'; set {key}={need} "
                                      f"(a converted SNN is rate-coded with IF neurons on the directly encoded image)")
            if not init_from:
                raise ConfigError("model.init_from=None is not allowed with model.init='converted'; give the path of a "
                                  "trained ANN checkpoint (or of a converted SNN checkpoint at T - 1)")
            check_convert_mode(convert_mode)
            check_int("model.convert_batches", convert_batches, 1)
            if isinstance(convert_v_init, bool) or not isinstance(convert_v_init, (int, float)) \
                    or not 0 <= convert_v_init < 1:
                raise ConfigError(f"model.convert_v_init={convert_v_init!r} is not allowed; expected a number in [0, 1) "
                                  f"(a fraction of the threshold: 0.5 half-threshold start, 0 start at rest)")
        if input_frames is not None:
            check_int("input_frames", input_frames, 1)
            if kind == "snn" and T != input_frames:
                raise ConfigError(f"model.T={T!r} is not allowed: the event data hold {input_frames} frames per sample "
                                  f"and an SNN takes one frame per time step; set model.T={input_frames} (for a "
                                  "reference: drop T from --references)")
            for key, value, need in (("model.encoding", encoding, "direct"), ("model.init", init, "scratch")):
                if value != need:
                    raise ConfigError(f"{key}={value!r} is not allowed with event data; set {key}={need} (frames of "
                                      "event counts are spikes already, and conversion is for image data)")
        for key, value in (("model.lr", lr), ("model.width", width), ("model.v_threshold", v_threshold)):
            check_number(key, value, 0.0, low_open=True)
        # spikingjelly's LIF decays by 1/tau per step: tau <= 1 would overshoot (it asserts tau > 1)
        check_number("model.tau", tau, 1.0, low_open=True, what=" (the LIF membrane time constant)")
        check_number("model.weight_decay", weight_decay, 0.0)
        check_number("model.momentum", momentum, 0.0, 1.0, high_open=True)
        dp_settings = check_dp(dp)
        norm = norm if norm is not None else "group" if dp_settings else "batch"
        check_choice("model.norm", norm, NORMS)
        if dp_settings and norm != "group":
            raise ConfigError(f"model.norm={norm!r} is not allowed with model.dp; set model.norm=group (BatchNorm's "
                              f"statistics mix the samples of a batch, so no per-sample gradient exists to clip)")
        self.save_hyperparameters()
        # The norm used, not null: checkpoints, done.json and the references (built from these
        # hparams, perhaps with dp: null) record and keep the network's normalisation.
        self.hparams.norm = norm
        self.kind = kind
        # Read by the attacks' query helpers: None marks an ANN. Settable for
        # latency sweeps (run the trained SNN with T' steps).
        self.T = T if kind == "snn" else None
        self.encoding = encoding
        self.input_frames = input_frames
        self.input_shape = tuple(input_shape)
        mean, std = normalization if normalization is not None else ([0.0] * input_shape[0], [1.0] * input_shape[0])
        self.normalize = Normalize(mean, std)
        if net is not None:
            self.net = build_user_net(net, num_classes, input_shape)
            if kind == "snn":  # what a user forgets: spikingjelly layers default to single-step
                functional.set_step_mode(self.net, "m")
        else:
            spiking = {} if kind == "ann" else dict(neuron_type="scaled_if" if init == "converted" else neuron,
                                                    surrogate_name=surrogate, tau=tau, v_threshold=v_threshold,
                                                    v_init=convert_v_init)
            self.net = build_network(arch, kind, input_shape, num_classes, width, norm, **spiking)
        if init == "converted":
            # False until the weights and thresholds came from init_from: a resumed or
            # reloaded checkpoint has True here and is not converted again.
            self.register_buffer("init_done", torch.zeros((), dtype=torch.bool))
        # DP-SGD: per-sample gradient hooks on self.net (active in training mode only), noise,
        # accountant. MembershipDataModule reads poisson_sampling to draw Poisson batches.
        if dp_settings and dp_settings.fix_modules:
            self.net = fix_modules(self.net)
        self.private = (PrivateTraining(dp_settings, self.net, time_major=kind == "snn", steps_per_sample=T)
                        if dp_settings else None)
        self.poisson_sampling = self.private is not None
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # Whether forward_steps has a readout per time step (what latency audits read): every
        # built-in SNN; a user SNN when its network returns [T, B, classes], not [B, classes].
        self.step_readout = kind == "snn"
        if net is not None:
            check_contract(self)  # sets step_readout from the network's output

    # -- rebuilding from a checkpoint ---------------------------------------------------
    @classmethod
    def rebuild(cls, hparams: dict, state: dict, label: str = "checkpoint") -> "Classifier":
        """The model that `hparams` describe, with `state` loaded, in eval mode: the one way a
        Classifier is rebuilt from a checkpoint's contents (ConfigError naming `label`)."""
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}  # not the CLI's _class_path etc.
        try:
            model = cls(**{k: v for k, v in hparams.items() if k in allowed})
            model.load_state_dict(state)
        except ConfigError:
            raise  # a model.net that no longer imports or keeps its contract says so itself
        except Exception as err:
            raise ConfigError(f"{label} does not match its own hyper-parameters ({first_line(err)})") from None
        return model.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, plan=None, index: int | None = None,
                        **read_kwargs) -> tuple["Classifier", dict]:
        """(model, the whole checkpoint) of a checkpoint of this tool, read by
        core.rundir.read_checkpoint (weights only; checked against `plan` and `index`)."""
        hparams, state, ckpt = read_checkpoint(path, plan, index, **read_kwargs)
        return cls.rebuild(hparams, state, read_kwargs.get("label") or f"checkpoint {path}"), ckpt

    # -- forward ------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [T, B, C, H, W] network input; [T, B, ...] passes through."""
        if x.dim() == len(self.input_shape) + 1:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        if self.encoding == "poisson":
            # Rates are pixel intensities in [0, 1]. In eval mode the spike trains come
            # from a fixed generator so that a query gives the same logits every time.
            gen = None if self.training else torch.Generator(device=x.device).manual_seed(0)
            return (torch.rand(x.shape, generator=gen, device=x.device) < x).to(x.dtype)
        return self.normalize(x)

    def frames_to_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Event frames [B, F, C, H, W] -> the SNN's input [T, B, C, H, W]: frame t is step t,
        taken as it is (event counts are spikes already: not normalised, repeated or
        Poisson-coded). Run with T < F steps (a latency audit), the SNN sees the first T
        frames, which is a T-step run's prefix, as for images."""
        if x.dim() != len(self.input_shape) + 2 or x.shape[1] != self.input_frames:
            raise ConfigError(f"the event data give inputs of shape {tuple(x.shape)}, but this model was trained on "
                              f"[B, {self.input_frames}, {', '.join(map(str, self.input_shape))}]: data.T comes from "
                              f"model.T, so run it with --model.T {self.input_frames}")
        if self.T > x.shape[1]:
            raise ValueError(f"T={self.T} steps asked of event data with {x.shape[1]} frames per sample; "
                             f"latencies of event data go up to the frames, {x.shape[1]}")
        return x[:, : self.T].transpose(0, 1)

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """SNN readout at every time step: [T, B, classes]."""
        if self.kind != "snn":
            raise RuntimeError("forward_steps is for SNNs; this model is an ANN")
        if not self.step_readout:
            raise ConfigError(f"model.net={self.hparams.net['class_path']} returns logits [B, classes], not a readout "
                              f"per time step [T, B, classes]; latency audits (run.py audit --latencies) and "
                              f"forward_steps need a network that returns [T, B, classes]")
        return self._snn_output(x)

    def _snn_output(self, x: torch.Tensor) -> torch.Tensor:
        """The SNN's network output for x, from rest: [T, B, classes] ([B, classes] for a user
        network that reads out over time itself)."""
        functional.reset_net(self.net)  # no membrane potential may leak from the last query
        if self.input_frames is not None:
            return self.net(self.frames_to_steps(x))
        if self.hparams.net is None and self.encoding == "direct" and x.dim() == len(self.input_shape) + 1 \
                and self._opens_with_conv_norm() and not dp_fault("per_step_clip"):  # the fault needs T rows everywhere
            out = self._stem_once(x)
            for module in itertools.islice(self.net, 2, None):  # not net[2:]: that builds a Sequential per call
                out = module(out)
            return out
        return self.net(self.encode(x))

    def _opens_with_conv_norm(self) -> bool:
        # Every built-in architecture opens with conv, norm (networks._conv_bn); _stem_once relies on it.
        return isinstance(self.net[0], layer.Conv2d) and isinstance(self.net[1], (layer.BatchNorm2d, layer.GroupNorm))

    def _stem_once(self, x: torch.Tensor) -> torch.Tensor:
        """The stem (conv, norm) of a directly encoded image, computed on [1, B, ...] and
        expanded to [T, B, ...]: all T steps see the same image, so conv and norm outputs
        (and BN's batch statistics; GroupNorm's are per sample and step) are those of the
        T-fold copy, at 1/T of the cost. Backward sums the T steps' gradients through the
        expand, as through the copies (and so do DP's per-sample gradients)."""
        conv, bn = self.net[0], self.net[1]
        fix_var = isinstance(bn, layer.BatchNorm2d) and bn.training and bn.track_running_stats and self.T > 1
        var_before = bn.running_var.clone() if fix_var else None
        out = bn(conv(self.normalize(x).unsqueeze(0)))
        if fix_var:
            # BN updates running_var with the unbiased variance var * n/(n-1), n = B*H*W
            # here but T*B*H*W over the T copies: rescale the update's new part by
            # T(n-1)/(Tn-1) so that the running statistics match too.
            n = out[0].numel() // out.shape[2]
            f = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            # .data: BN's autograd node holds running_var (unread in training mode), so
            # an in-place write through the tracked tensor would fail its version check.
            var = bn.running_var.data
            var.copy_((1 - f) * var_before + (var - (1 - f) * var_before) * (self.T * (n - 1) / (self.T * n - 1)))
        return out.expand(self.T, *out.shape[1:])

    def ann_input(self, x: torch.Tensor) -> torch.Tensor:
        """What an ANN's network takes: the normalised image, or for event data the frames
        [B, F, C, H, W] summed over time (every event once; counts, not normalised)."""
        if self.input_frames is None:
            return self.normalize(x)
        if x.dim() != len(self.input_shape) + 2:
            raise ValueError(f"event data: expected frames [B, F, {', '.join(map(str, self.input_shape))}], "
                             f"got shape {tuple(x.shape)}")
        return x.sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "ann":
            return self.net(self.ann_input(x))
        if self.step_readout:
            return self.forward_steps(x).mean(0)
        return self._snn_output(x)  # a user network's own logits [B, classes]

    # -- training -----------------------------------------------------------------------
    def on_fit_start(self):
        # With a datamodule the conversion runs before the sanity check; without one
        # (trainer.fit(model, loader)) the loader reaches the public API only as
        # trainer.train_dataloader, which Lightning sets after on_fit_start: on_train_start.
        if self._converting() and self.trainer.datamodule is not None:
            self._convert(self.trainer.datamodule.train_dataloader(), self.trainer.datamodule)

    def on_train_start(self):
        if self._converting() and self.trainer.datamodule is None:
            self._convert(self.trainer.train_dataloader, None)

    def _converting(self) -> bool:
        """model.init=converted and not converted yet (a resumed or reloaded model was)."""
        return self.hparams.init == "converted" and not bool(self.init_done)

    def _convert(self, loader, datamodule) -> None:
        if self.private is not None:
            rank_zero_warn(f"model.dp with model.init=converted: epsilon covers the {DP_SCOPE_CONVERTED}")
        summary = initialise(self, loader, datamodule)
        # Every rank calibrated on its own shuffle: take rank 0's result everywhere.
        state = self.trainer.strategy.broadcast({k: v.cpu() for k, v in self.state_dict().items()}, src=0)
        self.load_state_dict(state)
        rank_zero_info(f"model.init=converted: {summary}")

    def _step(self, batch, stage: str, acc):
        x, y = batch[0], batch[1]
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        loss = losses.mean()
        if len(y):  # a Poisson batch can be empty: it still makes a DP step (noise only), but logs nothing
            acc(logits, y)
            self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(y),
                     sync_dist=True)
            self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss, losses

    def training_step(self, batch, batch_idx):
        loss, losses = self._step(batch, "train", self.train_acc)
        # DP-SGD clips each sample's gradient of its own loss: backpropagate the sum, and the
        # DP optimizer divides the clipped, noised sum by the expected batch size.
        return losses.sum() if self.private is not None else loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if self.private is not None:
            check_trainer(hp.dp, self.trainer)
            # estimated_stepping_batches loads the training loader, the one the fit loop then uses:
            # its sampling rate and the planned steps set the noise for a target epsilon.
            steps = self.trainer.estimated_stepping_batches
            opt = self.private.optimizer(opt, self.trainer.train_dataloader, steps)
        if hp.scheduler == "none":
            return opt
        epochs = max(1, self.trainer.max_epochs or 1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)}

    # -- differential privacy (privacy.py) -----------------------------------------------
    def on_train_epoch_end(self):
        if self.private is not None:  # spent epsilon against the epoch, next to the attack metrics
            self.log("dp/epsilon", self.private.epsilon(), on_step=False, on_epoch=True, prog_bar=True)

    def dp_facts(self) -> dict | None:
        """The accountant's epsilon and what it rests on (done.json and the report), or None without DP."""
        if self.private is None:
            return None
        return {**self.private.facts(), "scope": DP_SCOPE_CONVERTED if self.hparams.init == "converted" else "all training"}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.private is not None:
            checkpoint["dp"] = self.private.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        try:
            trainer = self.trainer
        except RuntimeError:  # "not attached to a Trainer": a checkpoint loaded outside of fit
            trainer = None
        if trainer is not None and trainer.state.fn == "fit" and (self.private is None) != ("dp" not in checkpoint):
            # Resuming must keep the accounting whole: a DP run continued without DP (or a plain
            # run continued with DP, its earlier steps unaccounted) would report a wrong epsilon.
            raise ConfigError(f"model.dp={self.hparams.dp!r} but the checkpoint being resumed was trained "
                              f"{'with' if 'dp' in checkpoint else 'without'} DP; resume with its own model.dp, "
                              f"or start a new run_dir")
        if self.private is not None and "dp" in checkpoint:
            self.private.load_state_dict(checkpoint["dp"])
