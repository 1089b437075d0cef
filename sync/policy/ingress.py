"""What one peer link reads: our own policy (ingress) intersected with what the peer's
policy grants us (egress), when we read the peer as the role it made for us.

A region decides what it accepts; the owner decides what leaves. A transfer happens only
where both allow, and what our policy asks for beyond the owner's grant is named (per
table, with the reason) instead of failing the whole link.
"""

from __future__ import annotations

import dataclasses

from sync.policy.model import Policy, TableRule

Granted = tuple[dict[str, tuple[str, ...]], frozenset[str]]   # table -> columns; filtered


def intersect(rules: dict[str, TableRule], granted: dict[str, tuple[str, ...]], *,
              peer: str, region: str) -> tuple[dict[str, TableRule], dict[str, str]]:
    """The rules narrowed to the owner's grant, and why each narrowed table differs."""
    out: dict[str, TableRule] = {}
    notes: dict[str, str] = {}
    for table, rule in rules.items():
        cols = granted.get(table)
        if cols is None:
            notes[table] = f"{peer}'s policy does not send {table} to {region}"
            continue
        if rule.rows is not None and not rule.rows.columns <= set(cols):
            notes[table] = f"our row filter for {table} reads columns {peer} does not send us"
            continue
        missing = [c for c in rule.columns if c not in cols]
        if missing:
            notes[table] = f"{peer} does not send {table}.{', '.join(missing)}; receiving the rest"
            rule = dataclasses.replace(rule, columns=tuple(c for c in rule.columns if c in cols))
        out[table] = rule
    return out, notes


def link_rules(policy: Policy, tables: set[str], granted: Granted | None, *, peer: str,
               region: str) -> tuple[dict[str, TableRule], dict[str, str]]:
    """Our rules for tables we track, intersected with the grant when there is one."""
    rules = {t: r for t, r in policy.rules_to(region).items() if t in tables}
    if granted is None:
        return rules, {}
    return intersect(rules, granted[0], peer=peer, region=region)


def filtered_tables(rules: dict[str, TableRule], granted: Granted | None) -> frozenset[str]:
    """Tables whose rows can leave what we may hold: filtered by us or by the owner."""
    owner = granted[1] if granted is not None else frozenset()
    return frozenset(t for t, r in rules.items() if r.rows is not None or t in owner)
