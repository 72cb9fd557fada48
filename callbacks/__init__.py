"""Lightning callbacks. MembershipAttack audits the target at the end of validation epochs;
the audit engine it drives lives in audit/."""

from .dp_canaries import WhiteBoxCanaryLog
from .membership_attack import MembershipAttack

__all__ = ["MembershipAttack", "WhiteBoxCanaryLog"]
