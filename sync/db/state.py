"""Every statement on regionsync's own bookkeeping tables, by name.

``sync.settings`` (the region's name), ``sync.peer_state`` (a token per peer and what the
policy let it send), ``sync.integration_log`` (each batch applied), ``sync.conflict_log``,
``sync.narrowed_column``, ``sync.policy_audit``, the erasure records (``sync.erasure``,
``sync.erasure_log``) and the egress bookkeeping (``sync.egress_role``, ``egress_table``,
``egress_sent``, ``egress_withdrawal``; the owner's per-destination marking of its sent set
runs server-side, in the ``sync.egress_mark`` that ``sync.source.egress`` makes from the
policy; `migrate` names the region inside its own Alembic transaction). Other modules call
these functions instead of writing the SQL again, so a column or a rule about these tables
(a token never moves backwards) lives in one place. The dead letters have their own module,
``sync.db.dead_letters``; the journal and tombstones are part of capture's and apply's own
statements.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from sync.db.connect import scalar

Conn = psycopg.Connection

# -- settings ------------------------------------------------------------------------------


def region_of(conn: Conn) -> str | None:
    """The region this database belongs to (raises UndefinedTable if never migrated)."""
    row = conn.execute("SELECT region FROM sync.settings").fetchone()
    return row[0] if row else None


# -- peer_state ----------------------------------------------------------------------------


def read_token(conn: Conn, peer: str) -> str | None:
    """The snapshot token of the last batch applied from ``peer`` (None: never)."""
    row = conn.execute("SELECT token FROM sync.peer_state WHERE peer = %s", (peer,)).fetchone()
    return row[0] if row else None


def read_view(conn: Conn, peer: str) -> dict[str, Any] | None:
    """What the policy let ``peer`` send us when we last applied from it."""
    row = conn.execute("SELECT policy_view FROM sync.peer_state WHERE peer = %s",
                       (peer,)).fetchone()
    return row[0] if row else None


def save_token(conn: Conn, peer: str, token: str, *, rows: int, initial: bool,
               policy_sha: str | None, view: dict[str, Any] | None) -> bool:
    """Store ``token`` unless the stored one is newer; False when it would move back."""
    cur = conn.execute("""
        INSERT INTO sync.peer_state AS p (peer, token, initial_load_at, last_applied_at,
                                          batches_applied, changes_applied, policy_sha,
                                          policy_view)
        VALUES (%(peer)s, %(token)s, CASE WHEN %(initial)s THEN now() END, now(), 1,
                %(rows)s, %(sha)s, %(view)s)
        ON CONFLICT (peer) DO UPDATE SET
            token = EXCLUDED.token, last_applied_at = now(),
            batches_applied = p.batches_applied + 1,
            changes_applied = p.changes_applied + EXCLUDED.changes_applied,
            policy_sha = EXCLUDED.policy_sha,
            policy_view = coalesce(EXCLUDED.policy_view, p.policy_view)
        WHERE pg_snapshot_xmax(EXCLUDED.token::pg_snapshot)
              >= pg_snapshot_xmax(p.token::pg_snapshot)
        RETURNING 1""", {"peer": peer, "token": token, "initial": initial, "rows": rows,
                         "sha": policy_sha,
                         "view": json.dumps(view) if view is not None else None})
    return cur.fetchone() is not None


def save_view(conn: Conn, peer: str, view: dict[str, Any]) -> None:
    conn.execute("UPDATE sync.peer_state SET policy_view = %s WHERE peer = %s",
                 (json.dumps(view), peer))


def forget_peer(conn: Conn, peer: str) -> None:
    """Drop ``peer``'s token: the next batch from it is an initial load (resync)."""
    conn.execute("DELETE FROM sync.peer_state WHERE peer = %s", (peer,))


def forget_region(conn: Conn, region: str) -> dict[str, int]:
    """A retired region's bookkeeping here: our token for it, the policy view and narrowed
    columns of what it sent, its dead letters (what it wrote reaches us from the survivors
    now). Its history — conflict, integration and egress logs — stays for the auditors.
    Returns the rows removed per table."""
    out = {}
    for table in ("peer_state", "narrowed_column", "dead_letter"):
        out[table] = conn.execute(sql.SQL("DELETE FROM sync.{} WHERE peer = %s").format(
            sql.Identifier(table)), (region,)).rowcount
    return out


def peer_records(conn: Conn) -> dict[str, dict[str, Any]]:
    """Per peer: token, last success, counters, policy, dead letters and conflicts."""
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
    return peers


# -- integration_log -----------------------------------------------------------------------


def log_batch(conn: Conn, peer: str, *, kind: str, rows: int, policy_sha: str | None,
              token: str | None) -> None:
    conn.execute("INSERT INTO sync.integration_log (peer, kind, rows, policy_sha, token) "
                 "VALUES (%s, %s, %s, %s, %s)", (peer, kind, rows, policy_sha, token))


# -- clock ---------------------------------------------------------------------------------


def now(conn: Conn) -> datetime:
    """The database's clock now (``clock_timestamp()``): what later writes compare with."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


# -- conflict_log --------------------------------------------------------------------------


def record_conflict(conn: Conn, *, table: str, key: Any, peer: str, winner_origin: str,
                    winner_modifiedon: Any, loser_origin: str | None, loser_modifiedon: Any,
                    loser_row: dict[str, Any], diff_json: str,
                    columns: dict[str, dict[str, str]] | None = None,
                    reason: str | None = None) -> None:
    """``columns``: per column that lost, both versions (``lost``, ``won``: time and
    origin as ``sync.versions.describe`` writes them); None for a whole-row decision.
    ``reason``: what decided it, when not last-writer-wins (an alternate key)."""
    conn.execute("""
        INSERT INTO sync.conflict_log (tablename, pk, peer, winner_origin, winner_modifiedon,
                                       loser_origin, loser_modifiedon, loser_row, diff, columns,
                                       reason)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (table, key, peer, winner_origin, winner_modifiedon, loser_origin, loser_modifiedon,
         json.dumps(loser_row), diff_json, json.dumps(columns) if columns else None, reason))


def list_conflicts(conn: Conn, table: str | None, limit: int) -> list[tuple]:
    return conn.execute("""
        SELECT id, logged_at, tablename, pk, peer, loser_origin, loser_modifiedon,
               winner_origin, winner_modifiedon,
               coalesce((SELECT string_agg(k, ', ' ORDER BY k)
                         FROM jsonb_object_keys(columns) k),
                        (SELECT string_agg(k, ', ') FROM jsonb_object_keys(
                             coalesce(diff->'values_changed', '{}'::jsonb)) k)),
               coalesce(reason, 'last writer wins')
        FROM sync.conflict_log
        WHERE %(table)s::text IS NULL OR tablename = %(table)s
        ORDER BY id DESC LIMIT %(limit)s""", {"table": table, "limit": limit}).fetchall()


def first_conflict(conn: Conn) -> tuple[str, str, Any] | None:
    """(loser origin, winner origin, diff) of the oldest recorded conflict."""
    return conn.execute("SELECT loser_origin, winner_origin, diff FROM sync.conflict_log "
                        "ORDER BY id LIMIT 1").fetchone()


def count_conflicts(conn: Conn) -> int:
    return scalar(conn.execute("SELECT count(*) FROM sync.conflict_log"))


# -- narrowed_column -----------------------------------------------------------------------


def record_narrowed(conn: Conn, peer: str, table: str, column: str, policy_sha: str) -> None:
    """``column`` of ``table`` no longer comes from ``peer`` (for `policy drift`)."""
    conn.execute("INSERT INTO sync.narrowed_column (peer, tablename, column_name, policy_sha) "
                 "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", (peer, table, column,
                                                                   policy_sha))


def forget_narrowed(conn: Conn, peer: str, table: str, columns: list[str]) -> None:
    conn.execute("DELETE FROM sync.narrowed_column WHERE peer = %s AND tablename = %s "
                 "AND column_name = ANY(%s)", (peer, table, columns))


def narrowed_columns(conn: Conn) -> dict[tuple[str, str], list[str]]:
    """(peer, table) -> columns that used to come from that peer."""
    rows = conn.execute("SELECT peer, tablename, array_agg(column_name ORDER BY column_name)"
                        " FROM sync.narrowed_column GROUP BY 1, 2").fetchall()
    return {(p, t): cols for p, t, cols in rows}


# -- policy_audit --------------------------------------------------------------------------


def record_policy(conn: Conn, sha: str, files: Any) -> None:
    conn.execute("INSERT INTO sync.policy_audit (sha, files) VALUES (%s, %s)", (sha, files))


# -- egress (what this region serves each destination) ------------------------------------


def replace_egress_grants(conn: Conn, role: str, region: str, policy_sha: str,
                          grants: list[tuple[str, list[str], str | None]],
                          max_rows_per_minute: int | None = None) -> None:
    """Record what ``role`` (for ``region``) may read: (table, columns, row filter SQL)."""
    conn.execute("INSERT INTO sync.egress_role (role_name, region, policy_sha, "
                 "max_rows_per_minute) VALUES (%s, %s, %s, %s) ON CONFLICT (role_name) DO "
                 "UPDATE SET policy_sha = EXCLUDED.policy_sha, granted_at = now(), "
                 "max_rows_per_minute = EXCLUDED.max_rows_per_minute",
                 (role, region, policy_sha, max_rows_per_minute))
    conn.execute("DELETE FROM sync.egress_table WHERE role_name = %s", (role,))
    for table, columns, row_filter in grants:
        # colmask: the bits of the data columns sent (as the capture triggers set them in
        # sync_changed), so that sync.egress_changes hides updates of any other column
        conn.execute("INSERT INTO sync.egress_table (role_name, tablename, columns, row_filter,"
                     " colmask) SELECT %s, %s, %s::text[], %s,"
                     " (SELECT bit_or(1::bigint << least(a.attnum - 1, 63)) FROM pg_attribute a"
                     "  WHERE a.attrelid = to_regclass(format('public.%%I', %s::text))"
                     "    AND a.attname = ANY(%s::text[]) AND a.attname !~ '__v$'"
                     "    AND a.attname <> 'sync_base')",
                     (role, table, columns, row_filter, table, columns))


def forget_egress_except(conn: Conn, regions: list[str]) -> None:
    """Destinations no longer served lose their records (and so every view's rows)."""
    conn.execute("DELETE FROM sync.egress_sent WHERE role_name IN (SELECT role_name FROM "
                 "sync.egress_role WHERE region <> ALL(%s))", (regions,))
    conn.execute("DELETE FROM sync.egress_withdrawal WHERE role_name IN (SELECT role_name FROM "
                 "sync.egress_role WHERE region <> ALL(%s))", (regions,))
    conn.execute("DELETE FROM sync.egress_role WHERE region <> ALL(%s)", (regions,))


def egress_granted(conn: Conn) -> list[tuple[str, str]]:
    """(role, table) pairs a destination is sent now."""
    return conn.execute("SELECT role_name, tablename FROM sync.egress_table").fetchall()


def forget_sent(conn: Conn, role: str, table: str) -> None:
    """A table sent whole (or not at all) keeps no sent set."""
    conn.execute("DELETE FROM sync.egress_sent WHERE role_name = %s AND tablename = %s",
                 (role, table))


def mark_all_sent(conn: Conn, role: str, table: str, pk: str) -> None:
    """A table sent whole is now filtered: every key it holds counts as sent."""
    conn.execute(sql.SQL(
        "INSERT INTO sync.egress_sent (role_name, tablename, pk) "
        "SELECT %s, %s, {t}.{pk} FROM public.{t} ON CONFLICT DO NOTHING").format(
        t=sql.Identifier(table), pk=sql.Identifier(pk)), (role, table))


def mark_gone_outside(conn: Conn, role: str, table: str, pk: str,
                      row_filter: sql.Composable) -> list[UUID]:
    """Keys sent to ``role`` whose rows the filter no longer admits: marked gone (the
    destination removes its copies), returned for the withdrawal."""
    return [r[0] for r in conn.execute(sql.SQL(
        "UPDATE sync.egress_sent s SET gone_at = pg_current_xact_id() "
        "WHERE s.role_name = %s AND s.tablename = %s AND s.gone_at IS NULL "
        "AND EXISTS (SELECT 1 FROM public.{t} WHERE {t}.{pk} = s.pk "
        "            AND NOT coalesce(({f}), false)) RETURNING s.pk").format(
        t=sql.Identifier(table), pk=sql.Identifier(pk), f=row_filter), (role, table))]


def record_withdrawal(conn: Conn, role: str, table: str, origin: str, keys: list) -> None:
    """A journal entry for one destination only: these copies must go."""
    conn.execute("INSERT INTO sync.egress_withdrawal (role_name, tablename, origin, pks) "
                 "VALUES (%s, %s, %s, %s)", (role, table, origin, keys))


def egress_filters(conn: Conn) -> dict[tuple[str, str], str]:
    """(role, table) -> the row filter SQL in force."""
    return {(r, t): f for r, t, f in conn.execute(
        "SELECT role_name, tablename, row_filter FROM sync.egress_table "
        "WHERE row_filter IS NOT NULL")}


def egress_summary(conn: Conn, *, region: str | None, since: datetime | None,
                   until: datetime | None) -> list[tuple]:
    """Per destination region and table, between ``since`` and ``until``: batches, rows,
    first and last time, the policy hashes and column-set hashes in force, and the column
    sets served (each a list of column names)."""
    return conn.execute("""
        SELECT l.region, t.key AS tablename, count(*), sum(t.value::bigint)::bigint,
               min(l.served_at),
               max(l.served_at), array_agg(DISTINCT l.policy_sha),
               array_agg(DISTINCT l.columns_sha),
               coalesce(jsonb_agg(DISTINCT l.columns -> t.key)
                        FILTER (WHERE l.columns ? t.key), '[]'::jsonb)
        FROM sync.egress_log l CROSS JOIN LATERAL jsonb_each_text(l.tables) t
        WHERE (%(region)s::text IS NULL OR l.region = %(region)s)
          AND (%(since)s::timestamptz IS NULL OR l.served_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR l.served_at < %(until)s)
        GROUP BY 1, 2 ORDER BY 1, 2""",
        {"region": region, "since": since, "until": until}).fetchall()


# -- erasure -------------------------------------------------------------------------------


def purge_records(conn: Conn, table: str, key: UUID) -> dict[str, int]:
    """Forget a key's losing versions and dead letters (an erasure): rows removed of each."""
    return {
        "conflict_log": conn.execute("DELETE FROM sync.conflict_log WHERE tablename = %s "
                                     "AND pk = %s", (table, key)).rowcount,
        "dead_letter": conn.execute("DELETE FROM sync.dead_letter WHERE tablename = %s "
                                    "AND pk = %s", (table, key)).rowcount}


def request_erasure(conn: Conn, table: str, key: UUID) -> int:
    """A request peers carry out (``sync.egress_erasure``); its id."""
    return int(scalar(conn.execute("INSERT INTO sync.erasure (tablename, pk) VALUES (%s, %s) "
                                   "RETURNING id", (table, key))))


def record_receipt(conn: Conn, *, requested_by: str, request_id: int, table: str, key: UUID,
                   region: str, removed: dict[str, int]) -> datetime | None:
    """The receipt of a request carried out here; None if it already has one (idempotent:
    the first receipt stays)."""
    row = conn.execute(
        "INSERT INTO sync.erasure_log (requested_by, request_id, tablename, pk, region,"
        " removed) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (requested_by, request_id)"
        " DO NOTHING RETURNING erased_at",
        (requested_by, request_id, table, key, region, json.dumps(removed))).fetchone()
    return None if row is None else row[0]


def erasure_seen(conn: Conn, peer: str) -> int:
    """The last of ``peer``'s erasure requests this region has carried out (0: none)."""
    row = conn.execute("SELECT erasure_seen FROM sync.peer_state WHERE peer = %s",
                       (peer,)).fetchone()
    return int(row[0]) if row else 0


def mark_erasure_seen(conn: Conn, peer: str, request_id: int) -> None:
    conn.execute("UPDATE sync.peer_state SET erasure_seen = %s WHERE peer = %s",
                 (request_id, peer))
