"""Retention: delete what a region records once nobody needs it, in small batches.

- **Journal** entries older than ``retention.journal`` that every peer has consumed (its
  own token for us, read by our link to it, covers them) are pruned; entries older than
  ``retention.expire_after`` are pruned even if not, and move the journal's *horizon*: a
  peer whose token is older has expired and reloads (``sync.link``). Consumed-pruning
  needs a token from every region that pulls from us; a destination we do not pull from
  (``destinations:``) is never known to have consumed anything, so for it only the hard
  limit applies.
- **Tombstones** are kept for ``expire_after``: as long as any peer with a valid token may
  still need a delete. A peer away longer reloads, and the reload removes the copies its
  owner no longer has (no resurrection without the tombstone). Tombstones of erased
  records (``infinity``) are never pruned.
- The **conflict log, integration log, dead letters and egress log** after their own
  durations (``null``: kept forever; the egress log is by default, as the transfer
  record). Erasure requests after ``expire_after``; their receipts are kept.

Each statement deletes at most ``retention.batch`` rows in its own transaction, so pruning
never holds locks for long or builds one huge transaction; an idle region prunes nothing
and writes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from sync.config import RetentionConfig
from sync.db.connect import connect, one_row, scalar

log = logging.getLogger(__name__)

JOURNAL = """
WITH doomed AS (
    SELECT c.id, c.txid, c.changed_at < %(hard)s AS hard
    FROM sync.change_set c
    WHERE c.changed_at < %(soft)s
      AND (c.changed_at < %(hard)s
           OR (%(tokens)s::text[] IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM unnest(%(tokens)s::text[]) AS t(token)
                               WHERE NOT pg_visible_in_snapshot(c.txid, t.token::pg_snapshot))))
    ORDER BY c.changed_at LIMIT %(batch)s),
gone AS (DELETE FROM sync.change_set c USING doomed d WHERE c.id = d.id
         RETURNING d.txid, d.hard)
SELECT count(*), max(txid::text::bigint) FILTER (WHERE hard) FROM gone
"""

# (table, time column, the retention field that keeps it, extra condition)
LOGS = (("conflict_log", "logged_at", "conflict_log", "true"),
        ("integration_log", "applied_at", "integration_log", "true"),
        ("dead_letter", "last_failed_at", "dead_letter", "true"),
        ("egress_log", "served_at", "egress_log", "true"),
        ("tombstone", "modifiedon", "expire_after", "modifiedon <> 'infinity'"),
        ("erasure", "requested_at", "expire_after", "true"))


class Pruner:
    """One pruning round per ``run_once``, on its own connection (the leader's job)."""

    def __init__(self, conninfo: str, cfg: RetentionConfig, *,
                 tokens: Callable[[], Mapping[str, str | None]], pullers: list[str],
                 stop: threading.Event | None = None,
                 on_pruned: Callable[[str, int], None] | None = None) -> None:
        self.conninfo = conninfo
        self.cfg = cfg
        self.tokens = tokens          # peer -> its token for our journal (None: unknown)
        self.pullers = pullers        # every region that pulls from us
        self.stop = stop or threading.Event()
        self.on_pruned = on_pruned

    def run_once(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with connect(self.conninfo, application_name="regionsync-prune") as conn:
            now = scalar(conn.execute("SELECT clock_timestamp()"))
            known = self.tokens()
            tokens = [known[p] for p in self.pullers] \
                if all(known.get(p) for p in self.pullers) else None
            counts["change_set"] = self._journal(conn, now, tokens)
            for table, column, field, extra in LOGS:
                keep = getattr(self.cfg, field)
                if keep is not None:
                    counts[table] = self._batched(conn, table, column, extra,
                                                  now - timedelta(seconds=keep))
        for table, n in counts.items():
            if n:
                log.info("pruned %d row(s) of sync.%s", n, table,
                         extra={"table": table, "rows": n})
                if self.on_pruned is not None:
                    self.on_pruned(table, n)
        return counts

    def _journal(self, conn: psycopg.Connection, now: datetime,
                 tokens: list[str | None] | None) -> int:
        total = 0
        while not self.stop.is_set():
            with conn.transaction():
                n, hard_xid = one_row(conn.execute(JOURNAL, {
                    "soft": now - timedelta(seconds=self.cfg.journal),
                    "hard": now - timedelta(seconds=self.cfg.expire_after),
                    "tokens": tokens, "batch": self.cfg.batch}))
                if hard_xid is not None:    # entries maybe never consumed: the horizon moves
                    conn.execute(
                        "INSERT INTO sync.journal_horizon (pruned_xid) VALUES (%s::text::xid8) "
                        "ON CONFLICT (only_row) DO UPDATE SET pruned_xid = greatest("
                        "sync.journal_horizon.pruned_xid, EXCLUDED.pruned_xid), "
                        "pruned_at = now()", (str(hard_xid),))
            total += n
            if n < self.cfg.batch:
                return total
        return total

    def _batched(self, conn: psycopg.Connection, table: str, column: str, extra: str,
                 cutoff: datetime) -> int:
        stmt = sql.SQL("DELETE FROM sync.{t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM sync.{t} "
                       "WHERE {c} < %s AND {extra} LIMIT %s))").format(
            t=sql.Identifier(table), c=sql.Identifier(column), extra=sql.SQL(extra))
        total = 0
        while not self.stop.is_set():
            with conn.transaction():
                n = conn.execute(stmt, (cutoff, self.cfg.batch)).rowcount
            total += n
            if n < self.cfg.batch:
                break
        return total
