"""Field-level residency policy: what may cross which border (fail closed)."""

from .loader import load_policy
from .model import Policy, TableRule

__all__ = ["Policy", "TableRule", "load_policy"]
