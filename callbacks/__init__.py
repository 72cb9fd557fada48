from .membership_attack import MembershipAttack
from .scoring import ATTACKS

__all__ = ["ATTACKS", "MembershipAttack"]
