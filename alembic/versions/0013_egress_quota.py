"""The owner's cap per destination: rows served per minute, answered with a retry-after.

A region protects itself from a destination draining a large backlog too fast: with
``serve.max_rows_per_minute`` set, ``sync.egress_admit()`` — which a destination's reader
calls before each batch — answers how many seconds it must wait while what it was served
in the last minute (the egress log) is at or over the cap, and the reader waits that long
before asking again (a retry-after, not an error). The connection limit is a plain
``ALTER ROLE … CONNECTION LIMIT``.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE sync.egress_role ADD COLUMN max_rows_per_minute bigint;

CREATE FUNCTION sync.egress_admit() RETURNS double precision
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN r.max_rows_per_minute IS NULL OR s.served < r.max_rows_per_minute THEN 0
                ELSE greatest(0.1, 60 - extract(epoch FROM now() - s.oldest)) END
    FROM sync.egress_role r
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(t.n), 0) AS served, min(l.served_at) AS oldest
        FROM sync.egress_log l
        CROSS JOIN LATERAL (SELECT sum(v::bigint) AS n FROM jsonb_each_text(l.tables) AS e(k, v)) t
        WHERE l.role_name = r.role_name AND l.served_at > now() - interval '1 minute') s
    WHERE r.role_name = session_user
$$;
REVOKE ALL ON FUNCTION sync.egress_admit() FROM PUBLIC;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP FUNCTION sync.egress_admit(); "
               "ALTER TABLE sync.egress_role DROP COLUMN max_rows_per_minute")
