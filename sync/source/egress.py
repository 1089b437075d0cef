"""Egress at the owner: this region's policy, materialised in its own database.

For every destination region the owner creates (or updates) one role,
``regionsync_to_<region>``, and grants it exactly what its policy sends there:

- ``SELECT`` on the allowed columns of each table the policy sends (key and system
  columns included, ``versionnumber`` and never-leaves columns never);
- a row-level-security policy per row filter (``AS RESTRICTIVE … TO that role``), beside
  one permissive policy for everyone else so that enabling RLS changes nothing for the
  application or for apply;
- the journal, tombstones and its own token only through the ``sync.egress_*`` views
  (migration 0006), which show a destination nothing of a table it may not receive.

A destination connects as its role; however wrong, stale or hostile its own policy is, and
even with ``psql`` and its credentials, it reads no more than this. The statements run in
one transaction, are recorded in ``sync.egress_role``/``sync.egress_table`` and
``sync.policy_audit``, and are what ``regionsync roles`` prints for a DBA to review.
Creating roles needs CREATEROLE; row-level security and column grants need the tables'
owner: the role that runs ``regionsync migrate``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from sync.config import ServeConfig
from sync.db import state
from sync.db.catalog import Schema
from sync.policy.model import Policy

log = logging.getLogger(__name__)

EVERYONE = "regionsync_everyone"     # the permissive RLS policy that keeps other roles whole
VIEWS = ("egress_change_set", "egress_tombstone", "egress_peer_state", "egress_grants",
         "egress_me", "tracked_table", "egress_erasure", "egress_erasure_log",
         "egress_horizon")
# what a destination role may call (migrations 0008 and 0010)
FUNCTIONS = ("record_egress(jsonb, text)", "egress_changes(text, text, text, boolean)",
             "egress_prepare(text, text, boolean)", "egress_held(text, uuid[])",
             "egress_admit()")


def role_for(region: str) -> str:
    """The role a destination region connects as: ``regionsync_to_<region>``."""
    return "regionsync_to_" + region.replace("-", "_")


@dataclass(frozen=True)
class Grant:
    """What one destination may read of one table."""

    table: str
    columns: tuple[str, ...]
    row_filter: sql.Composable | None


def grants_for(policy: Policy, schema: Schema, destination: str) -> list[Grant]:
    """The owner's policy for ``destination``: tables, wire columns, row filters."""
    out = []
    for table in schema.topo_order():
        rule = policy.rule_for(table, destination)
        if rule is None:
            continue
        info = schema.tables[table]
        out.append(Grant(table, rule.granted_columns(info),
                         rule.rows.to_sql(table) if rule.rows is not None else None))
    return out


@dataclass(frozen=True)
class Current:
    """What the database already enforces, so that unchanged row-level security is left
    alone (ALTER TABLE and CREATE POLICY take an exclusive lock on the table)."""

    rls: frozenset[str]                                  # tables with RLS enabled
    policies: frozenset[tuple[str, str]]                 # (table, policy name)
    filters: dict[tuple[str, str], str]                  # (role, table) -> recorded filter
    granted: frozenset[tuple[str, str]] = frozenset()    # (role, table) sent until now

    @classmethod
    def read(cls, conn: psycopg.Connection) -> Current:
        rls = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relrowsecurity")}
        pols = {(t, p) for t, p in conn.execute(
            "SELECT tablename, policyname FROM pg_policies WHERE schemaname = 'public'")}
        return cls(frozenset(rls), frozenset(pols), state.egress_filters(conn),
                   frozenset(state.egress_granted(conn)))


def egress_statements(policy: Policy, schema: Schema, destinations: Iterable[str],
                      conn: psycopg.Connection | None = None,
                      current: Current | None = None,
                      serve: ServeConfig | None = None) -> list[sql.Composed | sql.SQL]:
    """Every statement that makes the database enforce ``policy`` for ``destinations``;
    with ``current``, row-level security that is already in force is not re-created."""
    stmts: list[sql.Composed | sql.SQL] = []
    filtered_anywhere: set[str] = set()
    plans = {d: grants_for(policy, schema, d) for d in sorted(set(destinations))}
    for grants in plans.values():
        filtered_anywhere |= {g.table for g in grants if g.row_filter is not None}
    for table in sorted(filtered_anywhere):
        t = sql.Identifier(table)
        if current is None or table not in current.rls:
            stmts.append(sql.SQL("ALTER TABLE public.{} ENABLE ROW LEVEL SECURITY").format(t))
        if current is None or (table, EVERYONE) not in current.policies:
            stmts += [
                sql.SQL("DROP POLICY IF EXISTS {} ON public.{}").format(
                    sql.Identifier(EVERYONE), t),
                sql.SQL("CREATE POLICY {} ON public.{} USING (true) WITH CHECK (true)").format(
                    sql.Identifier(EVERYONE), t)]
    for destination, grants in plans.items():
        name = role_for(destination)
        role = sql.Identifier(name)
        stmts += [
            sql.SQL("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) "
                    "THEN CREATE ROLE {} LOGIN; END IF; END$$").format(sql.Literal(name), role),
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(role),
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA sync FROM {}").format(role),
            sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA sync FROM {}").format(role),
            sql.SQL("GRANT USAGE ON SCHEMA public, sync TO {}").format(role),
            sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier("sync", v) for v in VIEWS), role),
            sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                sql.SQL(", ").join(sql.SQL("sync." + f) for f in FUNCTIONS), role),
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                role, sql.Literal((serve or ServeConfig()).max_connections))]
        wanted = {g.table: g for g in grants if g.row_filter is not None}
        for table in sorted(schema.tables):
            g = wanted.get(table)
            text = (g.row_filter.as_string(conn)
                    if g is not None and g.row_filter is not None and conn is not None else None)
            exists = current is None or (table, name) in current.policies
            same = current is not None and exists and g is not None \
                and current.filters.get((name, table)) == text
            if exists and not same:
                stmts.append(sql.SQL("DROP POLICY IF EXISTS {} ON public.{}").format(
                    role, sql.Identifier(table)))
            if g is not None and not same:
                stmts.append(sql.SQL("CREATE POLICY {} ON public.{} AS RESTRICTIVE FOR SELECT "
                                     "TO {} USING ({})").format(role, sql.Identifier(table), role,
                                                              g.row_filter))
        for g in grants:
            stmts.append(sql.SQL("GRANT SELECT ({}) ON public.{} TO {}").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in g.columns),
                sql.Identifier(g.table), role))
    stmts.append(mark_function(plans, schema))
    return stmts


_MARK = """
IF p_role = {role} AND p_table = {tname} THEN
    IF p_from IS NULL THEN
        INSERT INTO sync.egress_sent AS s (role_name, tablename, pk)
        SELECT p_role, p_table, {table}.{pk} FROM public.{table}
        WHERE coalesce(({filter}), false)
          AND (p_origin IS NULL OR ({table}.sync_origin = p_origin) <> p_exclude)
        ON CONFLICT (role_name, tablename, pk) DO UPDATE SET gone_at = NULL
            WHERE s.gone_at IS NOT NULL;
    ELSE
        INSERT INTO sync.egress_sent AS s (role_name, tablename, pk)
        SELECT p_role, p_table, {table}.{pk} FROM public.{table}
        WHERE {table}.{pk} IN (
                SELECT k FROM sync.journal_since(p_from, p_to, p_origin, p_exclude) c,
                              unnest(c.pks) AS k WHERE c.tablename = p_table)
          AND coalesce(({filter}), false)
        ON CONFLICT (role_name, tablename, pk) DO UPDATE SET gone_at = NULL
            WHERE s.gone_at IS NOT NULL;
        UPDATE sync.egress_sent s SET gone_at = pg_current_xact_id()
        WHERE s.role_name = p_role AND s.tablename = p_table AND s.gone_at IS NULL
          AND s.pk IN (SELECT k FROM sync.journal_since(p_from, p_to, p_origin, p_exclude) c,
                              unnest(c.pks) AS k WHERE c.tablename = p_table)
          AND NOT EXISTS (SELECT 1 FROM public.{table}
                          WHERE {table}.{pk} = s.pk AND coalesce(({filter}), false));
    END IF;
    RETURN;
END IF;"""


def mark_function(plans: dict[str, list[Grant]], schema: Schema) -> sql.Composed:
    """``sync.egress_mark``: the owner's filters as static SQL, one branch per destination
    and row-filtered table (see migration 0010). The body is passed as a string literal, so
    no value in a filter can end it early."""
    branches = [
        sql.SQL(_MARK).format(role=sql.Literal(role_for(d)), tname=sql.Literal(g.table),
                              table=sql.Identifier(g.table),
                              pk=sql.Identifier(schema.tables[g.table].pk),
                              filter=g.row_filter).as_string(None)
        for d, grants in sorted(plans.items()) for g in grants if g.row_filter is not None]
    body = "BEGIN" + "".join(branches) + "\nEND"
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION sync.egress_mark(p_role name, p_table text, p_from text, "
        "p_to text, p_origin text, p_exclude boolean) RETURNS void LANGUAGE plpgsql "
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {}").format(sql.Literal(body))


def apply_egress(conn: psycopg.Connection, policy: Policy, schema: Schema,
                 destinations: Iterable[str], serve: ServeConfig | None = None) -> list[str]:
    """Make the database enforce ``policy`` for ``destinations``, all or nothing, and record
    it. Returns the destination roles. Raises psycopg's error when the connection's role
    may not (CREATEROLE and table ownership are needed)."""
    destinations = sorted(set(destinations))
    with conn.transaction():
        # one regeneration at a time (two daemons, or a daemon and `regionsync roles`)
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('regionsync.egress'))")
        current = Current.read(conn)
        for stmt in egress_statements(policy, schema, destinations, conn, current, serve):
            conn.execute(stmt)
        state.forget_egress_except(conn, destinations)
        for destination in destinations:
            _withdraw_narrowed(conn, schema, role_for(destination), current,
                               grants_for(policy, schema, destination))
            state.replace_egress_grants(
                conn, role_for(destination), destination, policy.sha,
                [(g.table, list(g.columns),
                  g.row_filter.as_string(conn) if g.row_filter else None)
                 for g in grants_for(policy, schema, destination)],
                (serve or ServeConfig()).max_rows_per_minute)
    log.info("policy %s enforced for %s (roles %s)", policy.sha, ", ".join(destinations),
             ", ".join(role_for(d) for d in destinations))
    return [role_for(d) for d in destinations]


def drop_destination(conn: psycopg.Connection, region: str) -> bool:
    """Retire a destination: its sessions end, its row-security policies, grants, records
    and role go, in one transaction. Returns whether the role existed. A later
    ``apply_egress`` that still lists the region would make it again."""
    role = role_for(region)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('regionsync.egress'))")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE usename = %s", (role,))
        state.forget_egress_except(conn, [r for (r,) in conn.execute(
            "SELECT region FROM sync.egress_role WHERE region <> %s", (region,))])
        for (table,) in conn.execute(
                "SELECT tablename FROM pg_policies WHERE schemaname = 'public' "
                "AND policyname = %s", (role,)).fetchall():
            conn.execute(sql.SQL("DROP POLICY {} ON public.{}").format(
                sql.Identifier(role), sql.Identifier(table)))
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            return False
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        except psycopg.errors.DependentObjectsStillExist:
            # roles belong to the server: another database there still grants it something
            log.warning("role %s keeps privileges in another database of this server: it "
                        "can read nothing here now; drop it there (DROP OWNED BY, then "
                        "DROP ROLE)", role)
            return False
    log.info("destination %s retired: role %s dropped", region, role)
    return True


def _withdraw_narrowed(conn: psycopg.Connection, schema: Schema, role: str, current: Current,
                       grants: list[Grant]) -> None:
    """Keep the sent set (migration 0010) true to a new policy. A table no longer filtered
    (or no longer sent) needs none. A filter that changed leaves copies abroad that match
    it no more: they are marked gone and listed as a withdrawal of that destination alone,
    which reaches it with its next poll (invariant 8). A table that was sent whole and is
    now filtered may be held whole: every key counts as sent."""
    region = state.region_of(conn)
    now = {g.table: g for g in grants}
    for table in sorted({t for r, t in current.granted if r == role} | set(now)):
        g = now.get(table)
        if g is None or g.row_filter is None:
            state.forget_sent(conn, role, table)
            continue
        before = current.filters.get((role, table))
        if before == g.row_filter.as_string(conn) or region is None:
            continue
        pk = schema.tables[table].pk
        if before is None and (role, table) in current.granted:
            state.mark_all_sent(conn, role, table, pk)
        gone = state.mark_gone_outside(conn, role, table, pk, g.row_filter)
        if gone:
            state.record_withdrawal(conn, role, table, region, gone)
            log.info("policy narrows %s for %s: %d row(s) to withdraw", table, role, len(gone))


def local_role_statements(schema: Schema, *, daemon: str,
                          app: str | None) -> list[sql.Composed | sql.SQL]:
    """The region's own roles: the daemon (applies peers' changes; no superuser, not the
    tables' owner) and, when named, the application (DML on the tracked tables, nothing
    of the ``sync`` schema)."""
    tables = sql.SQL(", ").join(sql.SQL("public.{}").format(sql.Identifier(t))
                                for t in sorted(schema.tables))
    d = sql.Identifier(daemon)
    stmts: list[sql.Composed | sql.SQL] = [
        sql.SQL("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) "
                "THEN CREATE ROLE {} LOGIN; END IF; END$$").format(sql.Literal(daemon), d),
        sql.SQL("GRANT regionsync_apply TO {}").format(d),
        sql.SQL("GRANT USAGE ON SCHEMA public, sync TO {}").format(d),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(tables, d),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sync TO {}"
                ).format(d),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA sync TO {}").format(d),
        sql.SQL("GRANT USAGE ON SEQUENCE public.regionsync_versionnumber_seq TO {}").format(d),
        # `regionsync migrate` as the daemon (systemd's ExecStartPre) checks the head and
        # does nothing; upgrading stays the owner's
        sql.SQL("GRANT SELECT ON public.alembic_version TO {}").format(d),
    ]
    if app:
        a = sql.Identifier(app)
        stmts += [
            sql.SQL("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) "
                    "THEN CREATE ROLE {} LOGIN; END IF; END$$").format(sql.Literal(app), a),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(a),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(tables, a),
            sql.SQL("REVOKE ALL ON SCHEMA sync FROM {}").format(a)]
    return stmts


def script(policy: Policy, schema: Schema, destinations: Iterable[str],
           conn: psycopg.Connection, *, daemon: str | None = None,
           app: str | None = None, serve: ServeConfig | None = None) -> str:
    """The statements as one SQL script, for a DBA to read or run with psql (as the
    tables' owner, with CREATEROLE). Passwords are never in it: set them with \\password
    or use certificate authentication."""
    lines = ["-- regionsync roles for this region. Run as the tables' owner (CREATEROLE).",
             "BEGIN;"]
    if daemon:
        lines.append(f"-- the daemon ({daemon}) and the application"
                     f"{f' ({app})' if app else ''}")
        lines += [s.as_string(conn) + ";"
                  for s in local_role_statements(schema, daemon=daemon, app=app)]
    lines.append(f"-- egress for policy {policy.sha}: what each destination region may read")
    lines += [s.as_string(conn) + ";"
              for s in egress_statements(policy, schema, destinations, serve=serve)]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier for ``password`` (RFC 5802/7677, PostgreSQL's format), as
    psql's ``\\password`` computes it: ``ALTER ROLE … PASSWORD`` then carries the verifier,
    never the password, so neither the server log nor ``pg_stat_activity`` can show it."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(hashlib.sha256(client).digest()).decode()}:{b64(server).decode()}")


def set_passwords(conn: psycopg.Connection, roles: Iterable[str], password: str) -> None:
    """Give destination roles a password (as a SCRAM verifier)."""
    for role in roles:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(password))))
