"""What the policy lets a peer send us (its *view*), and what changed since the last batch.

The view — per table, the columns that travel and the row filter — is stored with the
peer's token. When it changes, narrowed columns are recorded (``sync.narrowed_column``:
only columns that used to come from that peer are ever cleared; the link then withdraws
what the narrower view no longer allows) and widened tables are named, so that the
caller can backfill them from the peer.
"""

from __future__ import annotations

import logging

import psycopg

from sync.db import state
from sync.db.catalog import Schema
from sync.policy.model import Policy, TableRule

log = logging.getLogger(__name__)

View = dict[str, dict]   # table -> {"columns": [...], "rows": filter text or None}


def policy_view(schema: Schema, rules: dict[str, TableRule]) -> View:
    """Per table, the columns this peer sends us and the row filter."""
    return {t: {"columns": list(r.wire_columns(schema.tables[t])),
                "rows": r.rows.text if r.rows else None} for t, r in sorted(rules.items())}


def record_view_change(conn: psycopg.Connection, peer: str, stored: View, view: View,
                       policy: Policy) -> list[str]:
    """Record what narrowed; return the tables that widened (new, more columns, other
    rows). When nothing widened the new view is stored at once; otherwise the backfill
    stores it with its last page."""
    widened = []
    with conn.transaction():
        for table, new in view.items():
            old = stored.get(table)
            added = set(new["columns"]) - set(old["columns"]) if old else set(new["columns"])
            if old is None or added or old["rows"] != new["rows"]:
                widened.append(table)
            if added:
                state.forget_narrowed(conn, peer, table, sorted(added))
            removed = set(old["columns"]) - set(new["columns"]) if old else set()
            for column in sorted(removed):
                state.record_narrowed(conn, peer, table, column, policy.sha)
                log.warning("policy %s: %s.%s no longer comes from %s; its values in "
                            "copies from there are withdrawn", policy.sha, table, column, peer)
        for table in sorted(set(stored) - set(view)):
            log.warning("policy %s: table %s no longer comes from %s; copies from there "
                        "are withdrawn", policy.sha, table, peer)
        if not widened:
            state.save_view(conn, peer, view)
    return widened
