from .datasets import DATASETS, load_pool
from .plan import Plan, load_or_create_plan, load_plan, make_plan, save_plan

__all__ = ["DATASETS", "MembershipDataModule", "Plan", "load_or_create_plan", "load_plan",
           "load_pool", "make_plan", "save_plan"]


def __getattr__(name):
    # Lazy: `import lightning` costs seconds; the plan and the readers do not need it.
    if name == "MembershipDataModule":
        from .membership import MembershipDataModule

        return MembershipDataModule
    raise AttributeError(name)
