"""What a region's sync state is, read from the databases (no daemon needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from sync.db import state
from sync.db.catalog import Schema
from sync.policy.model import Policy
from sync.records import Origins
from sync.source.reader import SourceReader


def local_status(conn: psycopg.Connection) -> dict[str, Any]:
    """Per peer: token, last apply, totals, dead letters and conflicts in this region."""
    peers: dict[str, dict[str, Any]] = {}
    peers = state.peer_records(conn)
    return {"peers": peers}


def link_status(record: dict[str, Any], health: Any, link: Any, breaker: str,
                stopped: str | None) -> dict[str, Any]:
    """One peer on /status: the local records, then what the running daemon knows of the
    link (lag and reachability, state, breaker, tables the owner refuses, last expiry)."""
    expired = link.expired_at
    return {**record, "lag_seconds": round(health.lag(), 3), "backlog": health.backlog,
            "reachable": health.reachable, "last_error": health.last_error,
            "state": f"stopped: {stopped}" if stopped is not None else "running",
            "tables_refused": dict(link.refused),
            "token_expired_at": datetime.fromtimestamp(expired, UTC).isoformat()
            if expired is not None else None,
            "breaker": breaker.lower().replace("_", "-")}


def peer_backlog(source: psycopg.Connection, *, peer: str, region: str, origins: Origins,
                 token: str | None, policy: Policy, schema: Schema) -> dict[str, Any]:
    """Backlog and lag of one peer, read from its journal on its own clock."""
    reader = SourceReader(source, peer=peer, region=region, origins=origins)
    tables = [t for t in policy.rules_to(region) if t in schema.tables]
    with reader.batch() as snap:
        if token is None:
            return {"backlog": None, "lag_seconds": None, "note": "no token: initial load pending"}
        pending = reader.pending(token, tables)
    lag = 0.0
    if pending.oldest_change is not None:
        lag = max(0.0, (snap.source_now - pending.oldest_change).total_seconds())
    return {"backlog": pending.total, "lag_seconds": round(lag, 3)}
