"""What a region's sync state is, read from the databases (no daemon needed)."""

from __future__ import annotations

from typing import Any

import psycopg

from .capture import SourceReader
from .policy.model import Policy
from .schema import Schema


def local_status(conn: psycopg.Connection) -> dict[str, Any]:
    """Per peer: token, last apply, totals, dead letters and conflicts in this region."""
    peers: dict[str, dict[str, Any]] = {}
    for peer, token, applied_at, batches, changes, sha in conn.execute(
            "SELECT peer, token, last_applied_at, batches_applied, changes_applied, policy_sha "
            "FROM sync.peer_state ORDER BY peer"):
        peers[peer] = {"token": token, "last_success": applied_at.isoformat(),
                       "batches_applied": batches, "changes_applied": changes,
                       "policy": sha, "dead_letters": 0, "conflicts": 0}
    for peer, n in conn.execute("SELECT peer, count(*) FROM sync.dead_letter GROUP BY peer"):
        peers.setdefault(peer, {})["dead_letters"] = n
    for peer, n in conn.execute("SELECT peer, count(*) FROM sync.conflict_log GROUP BY peer"):
        peers.setdefault(peer, {})["conflicts"] = n
    return {"peers": peers}


def peer_backlog(source: psycopg.Connection, *, peer: str, region: str, origins: str,
                 token: str | None, policy: Policy, schema: Schema) -> dict[str, Any]:
    """Backlog and lag of one peer, read from its journal on its own clock."""
    reader = SourceReader(source, peer=peer, region=region, origins=origins)  # type: ignore[arg-type]
    tables = [t for t in policy.rules_to(region) if t in schema.tables]
    with reader.batch() as snap:
        if token is None:
            return {"backlog": None, "lag_seconds": None, "note": "no token: initial load pending"}
        pending = reader.pending(token, tables)
    lag = 0.0
    if pending.oldest_change is not None:
        lag = max(0.0, (snap.source_now - pending.oldest_change).total_seconds())
    return {"backlog": pending.total, "lag_seconds": round(lag, 3)}
