"""A destination reads which of its columns each journal entry changed
(``sync.egress_changes(...).cols``, protocol 4), so that a receiver can read only those
columns of a range that holds nothing but updates: a drain of one edited column moved
every sent column and its version before.

The mask is cut to the columns the destination is sent (``egress_table.colmask``): it
tells no more than the entry's presence already did. Adding a result column means
dropping the function and the view over it; both are created again from their files and
granted again to every destination role.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""

from alembic import op
from sync.capture import objects

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

PINNED = {
    "functions/sync.egress_changes.sql": "d550c8b868cca9d2",
    "views/sync.egress_change_set.sql": "d5d907315578163c",
    "functions/sync.protocol_versions.sql": "dd43649676e51fe2",
}


def upgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS sync.egress_changes(text, text, text, boolean) CASCADE")
    objects.apply(op.get_bind(), PINNED)
    op.execute("""
        DO $$DECLARE r record; BEGIN
            FOR r IN SELECT e.role_name FROM sync.egress_role e
                     JOIN pg_catalog.pg_roles p ON p.rolname = e.role_name LOOP
                EXECUTE format('GRANT SELECT ON sync.egress_change_set TO %I', r.role_name);
                EXECUTE format('GRANT EXECUTE ON FUNCTION '
                               'sync.egress_changes(text, text, text, boolean) TO %I',
                               r.role_name);
            END LOOP;
        END$$""")


def downgrade() -> None:
    raise NotImplementedError("0023 changes what destinations read; restore from a backup")
