"""Lightning callbacks. MembershipAttack audits the target at the end of validation epochs;
the audit engine it drives lives in audit/."""

from .membership_attack import MembershipAttack

__all__ = ["MembershipAttack"]
