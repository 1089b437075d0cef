"""Row-filter literals checked the way PostgreSQL will read them, so that a policy that
would fail every poll (``PostgreSQL text fields cannot contain NUL``, a number out of its
column's range, a date PostgreSQL will not parse) is refused when it is loaded — by
``policy check`` and by the daemon's hot reload alike — with file, line and key.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

INT_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}
NUMERIC = re.compile(r"numeric\((\d+),\s*(\d+)\)")


def literal_problem(column: str, ty: str, value: object) -> str | None:
    """Why PostgreSQL would refuse ``value`` for a column of type ``ty``, or None."""
    if isinstance(value, str) and "\x00" in value:
        return f"the value for {column} contains a NUL byte, which PostgreSQL text cannot hold"
    if isinstance(value, bool):
        return None
    if ty in INT_RANGES and isinstance(value, int | Decimal):
        limit = INT_RANGES[ty]
        if value != int(value) or not -limit <= int(value) < limit:
            return f"{value} does not fit column {column} ({ty})"
    m = NUMERIC.fullmatch(ty)
    if m and isinstance(value, int | Decimal):
        precision, scale = int(m.group(1)), int(m.group(2))
        if abs(Decimal(value)) >= Decimal(10) ** (precision - scale):
            return f"{value} does not fit column {column} ({ty})"
    if isinstance(value, str):
        try:
            if ty == "date":
                date.fromisoformat(value)
            elif ty.startswith("timestamp"):
                datetime.fromisoformat(value)
            elif ty == "uuid":
                uuid.UUID(value)
        except ValueError:
            what = {"date": "a date (write YYYY-MM-DD)", "uuid": "a UUID"}.get(
                ty, "a timestamp (write ISO 8601)")
            return f"{value!r} is not {what}, as column {column} ({ty}) needs"
    return None


def comparison_problem(nodes: Iterable[Any], types: dict[str, str],
                       render: Callable[[Any], str]) -> str | None:
    """Why a literal of a comparison cannot compare with its column's type, or None.
    ``nodes`` are the filter's comparisons (``column`` and ``value`` or ``values``)."""
    for node in nodes:
        ty = types.get(node.column, "text")
        numeric = ty.startswith(("integer", "bigint", "smallint", "numeric", "real", "double"))
        values = node.values if hasattr(node, "values") else (node.value,)
        for v in values:
            problem = literal_problem(node.column, ty, v)
            if problem:
                return problem
            if ty == "boolean":
                if not isinstance(v, bool):
                    return f"column {node.column} is boolean; compare it with true or false"
            elif numeric:
                if isinstance(v, bool) or not isinstance(v, int | Decimal):
                    return f"column {node.column} is {ty}; {render(v)} is not a number"
            elif not isinstance(v, str):
                return (f"column {node.column} is {ty}; write the value in quotes: "
                        f"{render(str(v) if not isinstance(v, bool) else render(v))}")
    return None
