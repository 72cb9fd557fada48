from .datasets import DATASETS, load_pool
from .errors import ConfigError
from .membership import MembershipDataModule
from .plan import Plan, load_or_create_plan, load_plan, make_plan, save_plan

__all__ = ["DATASETS", "ConfigError", "MembershipDataModule", "Plan", "load_or_create_plan", "load_plan",
           "load_pool", "make_plan", "save_plan"]
