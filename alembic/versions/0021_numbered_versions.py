"""Column versions become numbers (protocol 3): one ``bigint`` per version, the time in
microseconds since 2000 shifted left 11 bits, or'ed with the writer's origin number
(sync/versions.py). A text version cost 35 bytes and a collation-aware comparison per
column per row merged; a number costs 8 bytes and an integer comparison.

Adds ``sync.origin`` (which number is which region, sync/db/origins.py), numbers this
region and every origin its versions name (``origin_numbers`` from the config given to
``regionsync migrate``, else a hash of the name; two names on one number are refused),
and retypes every tracked table's version columns in place — the same time and origin,
so no merge decides differently — with the functions of ``sync/capture/sql/`` that
changed, then re-creates the capture triggers, which stamp numbers.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03
"""

from sqlalchemy import text

from alembic import context, op
from sync.capture import objects
from sync.db import origins
from sync.errors import ConfigError

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

PINNED = {
    "functions/sync.version_of.sql": "8b008d940515739e",
    "functions/sync.version_number.sql": "c5d27ca9c5dbf6f0",
    "functions/sync.origin_numbers.sql": "2ecac3f46e1bf249",
    "functions/sync.local_origin.sql": "a2bbb60de457c7b5",
    "functions/sync.enable_column_versions.sql": "1cb1da1068d1a1d5",
    "functions/sync.enable_plpgsql_capture.sql": "f0ece3830fdcd54b",
    "functions/sync.enable_c_capture.sql": "815373903ab1741e",
    "functions/sync.describe_version.sql": "45c9451f012712a8",
    "functions/sync.protocol_versions.sql": "bbfb79496f9b0d42",
}


def _origins_in_data(conn) -> set[str]:  # type: ignore[no-untyped-def]
    """Every origin a version of a tracked table names (text versions, migration 0018)."""
    found: set[str] = set()
    tables = conn.execute(text("SELECT tablename FROM sync.tracked_table")).scalars().all()
    for table in tables:
        cols = conn.execute(text(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(:t) "
            "AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'text'::regtype "
            "AND (a.attname ~ '__v$' OR a.attname = 'sync_base')"),
            {"t": f'public."{table}"'}).scalars().all()
        if not cols:
            continue
        values = ", ".join(f'("{c}")' for c in cols)
        found.update(conn.execute(text(
            f'SELECT DISTINCT substr(v.x, 29) FROM public."{table}" t, '
            f"LATERAL (VALUES {values}) AS v(x) WHERE v.x IS NOT NULL")).scalars().all())
        found.update(conn.execute(text(
            f'SELECT DISTINCT sync_origin FROM public."{table}" '
            "WHERE sync_origin IS NOT NULL")).scalars().all())
    return found


def upgrade() -> None:
    conn = op.get_bind()
    op.execute("""
        CREATE TABLE IF NOT EXISTS sync.origin (
            number integer PRIMARY KEY CHECK (number BETWEEN 1 AND 2047),
            region text NOT NULL UNIQUE
        )""")
    explicit: dict[str, int] = dict(context.config.attributes.get("origin_numbers") or {})
    region = conn.execute(text("SELECT region FROM sync.settings")).scalar()
    names = set(explicit) | _origins_in_data(conn) | ({region} if region else set())
    wanted: dict[int, str] = {}
    for name in sorted(names):
        number = origins.number_for(name, explicit)
        if number in wanted:
            raise ConfigError(
                f"regions {wanted[number]} and {name} would share origin number {number}; "
                f"give one of them another number (1-2047) in origin_numbers, in every "
                "region's config, and migrate again", key="origin_numbers")
        wanted[number] = name
    for number, name in sorted(wanted.items()):
        conn.execute(text("INSERT INTO sync.origin (number, region) VALUES (:n, :r) "
                          "ON CONFLICT DO NOTHING"), {"n": number, "r": name})
    objects.apply(conn, PINNED)
    op.execute("SELECT sync.enable_change_tracking(tablename) FROM sync.tracked_table")


def downgrade() -> None:
    raise NotImplementedError("0021 retypes column versions; restore from a backup")
