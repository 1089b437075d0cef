"""Field-level residency policy: what may cross which border (fail closed)."""

from sync.policy.loader import load_policy
from sync.policy.model import Policy, TableRule

__all__ = ["Policy", "TableRule", "load_policy"]
