"""QMIA: no reference models; one regression model, trained on population samples only,
predicts the mean and spread of the target's rescaled logit for each sample, and a sample
scores by how far its own rescaled logit lies above that prediction.

The regression model is by default the target's architecture with a 2-output head (mean
and log standard deviation), trained with the Gaussian negative log-likelihood
(attacks/qmia.py) on the population minus a validation slice, which picks the best epoch;
its budget is at most the optimiser steps of one reference's training. It never sees an
audit sample while training. Seeded, and cached in model_<target>/qmia/ under a key of the
plan, the query strategy, the settings, the target's scores it learnt from (a function of
the target's weights: for a finished model, its checkpoint, whose hash the key also holds)."""

from __future__ import annotations

import copy
import json
import math
import time

import torch
from torch.utils.data import DataLoader, Subset

from attacks.qmia import gaussian_head, gaussian_nll, qmia
from core.errors import ConfigError, check_int, check_number
from core.rundir import atomic_write, model_dir, tensors_sha256, write_json

from . import Attack, Setting, register


def _check_model(key, value):
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{key}={value!r} is not allowed; expected null (the target's architecture) or a mapping "
                          "of model keys that differ, e.g. {kind: ann, arch: mlp}")


@register
class Qmia(Attack):
    name = "qmia"
    description = "target rescaled logit standardised by a regression model's predicted non-member mean and spread"
    paper = "Bertran et al., Scalable Membership Inference Attacks via Quantile Regression, NeurIPS 2023"
    access = "confidence"
    signals = ("rescaled_logit", "population")
    references = "none"
    auxiliary = ("a regression model (default: the target's architecture with a 2-output head) trained on "
                 "population samples only")
    settings = {
        "qmia_model": Setting(None, dict | None, "model keys that differ for QMIA's regression model, e.g. "
                              "{kind: ann} (null: the target's architecture with a 2-output head).", _check_model),
        "qmia_steps": Setting(None, int | None, "QMIA's optimiser steps (null: as many as one reference's "
                              "training).", lambda k, v: v is None or check_int(k, v, 1, what=" or null")),
        "qmia_val_fraction": Setting(0.2, float, "share of the population QMIA holds out to pick its best epoch, "
                                     "in (0, 0.5].", lambda k, v: check_number(k, v, 0.0, 0.5, low_open=True)),
        "qmia_seed": Setting(0, int, "seed of QMIA's split, initialisation and batch order.",
                             lambda k, v: check_int(k, v, 0)),
    }
    order = 80
    study = True  # a column of the study tables when a study runs it (not in the default selection)

    def __init__(self, **args):
        super().__init__(**args)
        self._details: dict = {}

    def prepare(self, context) -> dict:
        if not context.final:  # one regression model per audit, not one per training epoch
            return {}
        return {"qmia": {name: self._fit(context, name, signals) for name, signals in context.target_signals.items()}}

    def unavailable(self, data):
        if (data.extra.get("qmia") or {}).get(data.strategy) is None:
            return ("QMIA trains its regression model for the main target at the last audited epoch only; the "
                    "rotation at the end of fit has none (`run.py audit --targets all` gives every target its own)")
        return None

    def score(self, data):
        pred = data.extra["qmia"][data.strategy]
        positions = data.extra.get("positions")
        mean, std = (pred["mean"], pred["std"]) if positions is None else (pred["mean"][positions], pred["std"][positions])
        return qmia(data.phi_target, mean, std)

    def details(self) -> dict:
        return self._details

    def cost(self, queries, references, extra):
        """No reference: one regression model trained (at most one reference's optimiser
        steps, on the population), the target's passes, and one pass of the regression model
        over the audit set and the population."""
        return {"models_trained": 1, "inference_passes": queries + 1}

    # -- the regression model ---------------------------------------------------------------
    def _fit(self, ctx, strategy: str, signals: dict) -> dict:
        dm = ctx.dm
        labels = signals["population/rescaled_logit"].double().mean(0)  # [Z]: the target's scores
        members = int(dm.membership[ctx.target].sum())
        budget = ctx.epochs * math.ceil(members / dm.batch_size)  # one reference's optimiser steps
        steps = self.args["qmia_steps"] or budget
        key = {"plan": dm.plan.fingerprint, "strategy": strategy, "target": ctx.target,
               "checkpoint_sha256": ctx.checkpoint_sha256, "labels_sha256": tensors_sha256({"labels": labels}),
               "settings": self.args, "steps": steps, "audit_size": int(dm.membership.shape[1])}
        folder = model_dir(dm.run_dir, ctx.target) / "qmia"
        data_path, meta_path = folder / f"{strategy}.pt", folder / f"{strategy}.json"
        cached = _read(data_path, meta_path, key)
        if cached is None:
            cached = self._train(ctx, labels, steps, budget)
            tensors = {k: cached[k] for k in ("mean", "std")}
            atomic_write(data_path, lambda p: torch.save(tensors, p))
            write_json(meta_path, {**key, "details": cached["details"], "tensors_sha256": tensors_sha256(tensors)})
        self._details[strategy] = cached["details"]
        return cached

    def _train(self, ctx, labels: torch.Tensor, steps: int, budget: int) -> dict:
        from lightning_modules import Classifier  # the engine's model class (not imported by attacks/)

        dm, start = ctx.dm, time.perf_counter()
        z = labels.numel()
        g = torch.Generator().manual_seed(self.args["qmia_seed"])
        perm = torch.randperm(z, generator=g)
        n_val = max(1, round(self.args["qmia_val_fraction"] * z))
        val, train = perm[:n_val], perm[n_val:]
        if train.numel() < 2:
            raise ConfigError(f"qmia: the population holds {z} samples, too few to train on; give a larger "
                              "population (--data.population)")
        population = dm.population_set()
        hp = {k: v for k, v in dict(ctx.hparams).items() if not k.startswith("_")}
        hp.update({**(self.args["qmia_model"] or {}), "num_classes": 2, "dp": None, "init": "scratch",
                   "init_from": None})
        # Inside the training loop's validation (no grad, inference mode) when the callback runs it;
        # the target's RNG stays untouched.
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
            labels = labels.clone()  # a normal tensor, not an inference-mode one
            torch.manual_seed(self.args["qmia_seed"])
            model = Classifier(**hp).to(ctx.device)
            optim = torch.optim.Adam(model.parameters(), lr=hp.get("lr", 3e-3))
            loader = DataLoader(Subset(population, train.tolist()), batch_size=dm.batch_size, shuffle=True,
                                generator=g)
            val_loader = DataLoader(Subset(population, val.tolist()), batch_size=dm.eval_batch_size)
            target = labels.float().to(ctx.device)
            best, best_nll, best_epoch, done, epoch = None, math.inf, -1, 0, 0
            while done < steps:
                model.train()
                for x, _, idx in loader:
                    loss = gaussian_nll(model(x.to(ctx.device)), target[idx.to(ctx.device)])
                    optim.zero_grad()
                    loss.backward()
                    optim.step()
                    done += 1
                    if done >= steps:
                        break
                nll = self._nll(model, val_loader, target, ctx.device)
                if nll < best_nll:
                    best, best_nll, best_epoch = copy.deepcopy(model.state_dict()), nll, epoch
                epoch += 1
            model.load_state_dict(best)
            mean, std = self._predict(model, dm.audit_dataloader(), ctx.device)
        details = {"population": z, "train_samples": int(train.numel()), "val_samples": int(val.numel()),
                   "audit_samples_seen": 0, "steps": done, "epochs": epoch, "budget_steps": budget,
                   "best_epoch": best_epoch, "val_nll": float(best_nll),
                   "model": {k: hp.get(k) for k in ("kind", "arch", "T", "width") if k in hp},
                   "seconds": round(time.perf_counter() - start, 2)}
        return {"mean": mean, "std": std, "details": details}

    @staticmethod
    @torch.no_grad()
    def _nll(model, loader, target, device) -> float:
        model.eval()
        total, n = 0.0, 0
        for x, _, idx in loader:
            total += float(gaussian_nll(model(x.to(device)), target[idx.to(device)])) * len(idx)
            n += len(idx)
        return total / n

    @staticmethod
    @torch.no_grad()
    def _predict(model, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        means, stds = [], []
        for x, _, _ in loader:
            m, s = gaussian_head(model(x.to(device)).double())
            means.append(m.cpu())
            stds.append(s.cpu())
        return torch.cat(means), torch.cat(stds)


def _read(data_path, meta_path, key: dict) -> dict | None:
    """The cached prediction when its key matches and its tensors match their hash; else None."""
    if not (data_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        recorded, details = meta.pop("tensors_sha256"), meta.pop("details")
        if meta != json.loads(json.dumps(key)):
            return None
        tensors = torch.load(data_path, map_location="cpu", weights_only=True)
        if tensors_sha256(tensors) != recorded:
            return None
    except Exception:  # a damaged entry is recomputed
        return None
    return {**tensors, "details": {**details, "cached": True}}
