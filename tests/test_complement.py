"""A rotated target's complement as its reference: the bias `exclude_complement` removes.

References come in pairs whose membership rows are each other's negation. When reference k
is audited as the target, its partner is trained on exactly k's non-members, so which
references are OUT for a sample says whether the sample is a member of k. A target that
learned nothing then still looks vulnerable."""

import torch

from attacks import roc_metrics
from audit.scoring import score_attacks
from datamodules.plan import complement, make_plan


def test_complement_pairs_follow_the_plan():
    plan = make_plan("digits", 1797, 6, seed=3, population=200)
    assert complement(0) is None
    for k in range(1, 7):
        assert complement(complement(k)) == k
        assert torch.equal(plan.membership[complement(k)], ~plan.membership[k])


def signals(p_audit: torch.Tensor, p_pop: torch.Tensor) -> dict:
    logit = lambda p: (p / (1 - p)).log()  # noqa: E731
    return {"audit/probability": p_audit[None], "population/probability": p_pop[None],
            "audit/rescaled_logit": logit(p_audit)[None]}


def test_a_target_that_learned_nothing_leaks_through_its_complement_only():
    plan = make_plan("synthetic", 5000, 4, seed=0, population=1000)
    member = plan.membership  # [5, N]
    n, z = member.shape[1], 1000
    g = torch.Generator().manual_seed(1)
    # Every reference memorises its members (0.95) and gives its non-members a level of its
    # own with some noise; the target (model 1) answers the same for every input: no signal.
    level = {0: 0.6, 2: 0.3, 3: 0.7, 4: 0.65}
    models = {}
    for k, c in level.items():
        noise = lambda size: 0.02 * torch.rand(size, generator=g, dtype=torch.float64)  # noqa: E731
        models[k] = signals(torch.where(member[k], torch.tensor(0.95, dtype=torch.float64), c + noise(n)),
                            c + noise(z))
    target = signals(torch.full((n,), 0.9, dtype=torch.float64), torch.full((z,), 0.9, dtype=torch.float64))
    names = ["rmia_offline", "rmia_online", "lira_online", "lira_offline"]
    auc = {}
    for refs in ([0, 2, 3, 4], [0, 3, 4]):
        scores = score_attacks(names, target, [models[k] for k in refs], member[refs])
        auc[len(refs)] = {name: roc_metrics(s, member[1])["auc"] for name, s in scores.items()}
    # with model 2 = ~model 1 among the references, each of these attacks "finds" members
    assert all(abs(a - 0.5) > 0.15 for a in auc[4].values()), auc
    # without it, the references' membership is independent of the target's: chance
    assert all(abs(a - 0.5) < 0.03 for a in auc[3].values()), auc
