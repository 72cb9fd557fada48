"""RMIA with the time steps as queries: the true-class probability of the readout at each step,
sigmoid(steps) in float64, scored by online RMIA per step against the population's steps and
the per-step scores averaged (attacks/rmia.py, per_query=True, takes [Q, N] / [K, Q, N]
signals; the steps take the place of the queries)."""

import torch

from attacks import rmia

from . import Attack, register
from ._rmia import GAMMA, PAPER


@register
class StepsRmia(Attack):
    name = "steps_rmia"
    description = "online RMIA on the true-class probability at each time step, averaged over the steps"
    paper = PAPER + " (steps as queries)"
    access = "steps"
    signals = ("steps", "population")
    references = "in_out"
    settings = {"rmia_gamma": GAMMA}
    order = 220

    def score(self, data):
        def p(x):
            return torch.sigmoid(x)  # already float64: a rescaled logit is log p / (1 - p)

        return rmia(p(data.steps_target), p(data.steps_references), p(data.steps_target_z),
                    p(data.steps_references_z), data.ref_in, gamma=self.args["rmia_gamma"], per_query=True)

    def unavailable(self, data):
        return super().unavailable(data) or (None if all("population/steps" in s for s in (data.target,
                                                                                        *data.references))
                                             else "no steps level for the population")
