"""Egress log at the owner: what was served to whom.

Every batch a destination role reads with rows in it is recorded in this region's own
database: when, which role and region, rows per table, a hash of the column sets it was
granted and the policy hash they came from. The role and the grants come from the owner's
own records (``sync.egress_role``/``egress_table``), not from what the reader claims;
the reader reports its row counts through ``sync.record_egress()``, the only thing a
destination role may call (its reads are read-only transactions, which cannot write).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE sync.egress_log (
    id          bigserial   PRIMARY KEY,
    served_at   timestamptz NOT NULL DEFAULT now(),
    role_name   name        NOT NULL,
    region      text        NOT NULL,
    tables      jsonb       NOT NULL,          -- {"contact": 120, ...}: rows read per table
    columns_sha text        NOT NULL,          -- md5 of "table:col,col;…" granted then
    policy_sha  text        NOT NULL,
    token       text
);
CREATE INDEX egress_log_served ON sync.egress_log (served_at);

CREATE FUNCTION sync.record_egress(p_tables jsonb, p_token text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT e.role_name, e.region, e.policy_sha INTO r
    FROM sync.egress_role e WHERE e.role_name = session_user;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'regionsync: % is not a destination role of this region', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO sync.egress_log (role_name, region, tables, columns_sha, policy_sha, token)
    SELECT r.role_name, r.region,
           coalesce(jsonb_object_agg(t.tablename, (p_tables ->> t.tablename)::bigint)
                    FILTER (WHERE p_tables ? t.tablename), '{}'::jsonb),
           md5(coalesce(string_agg(t.tablename || ':' || array_to_string(t.columns, ','), ';'
                                   ORDER BY t.tablename), '')),
           r.policy_sha, p_token
    FROM sync.egress_table t WHERE t.role_name = r.role_name;
END $$;
REVOKE ALL ON FUNCTION sync.record_egress(jsonb, text) FROM PUBLIC;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP FUNCTION sync.record_egress(jsonb, text); DROP TABLE sync.egress_log")
