"""Egress at the owner: what each destination region may read, enforced in this database.

A destination region connects as its own role (``regionsync_to_<region>``), created from
this region's policy with column-level SELECT on exactly the columns the policy sends it
and row-level-security policies for its row filters (``sync.egress`` regenerates them).
It has no privilege on the journal or the tombstones: it reads them through the views
below, which show a registered destination role only the entries of tables it may
receive — never an entry of a region-local table such as ``medicalcase``. A role that is
not a registered destination (the owner, a superuser) sees everything, as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Destination roles this region created from its policy, and what each may read.
CREATE TABLE sync.egress_role (
    role_name  name PRIMARY KEY,
    region     text NOT NULL UNIQUE,
    policy_sha text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE sync.egress_table (
    role_name  name NOT NULL REFERENCES sync.egress_role ON DELETE CASCADE,
    tablename  text NOT NULL,
    columns    text[] NOT NULL,
    row_filter text,                -- the filter in SQL (as in the RLS policy), or NULL
    PRIMARY KEY (role_name, tablename)
);

-- A registered destination sees only its tables' journal entries and tombstones; the
-- views run with their owner's rights, so the role needs no privilege on the tables.
CREATE VIEW sync.egress_change_set WITH (security_barrier) AS
SELECT c.id, c.tablename, c.op, c.origin, c.txid, c.changed_at, c.pks
FROM sync.change_set c
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR c.tablename IN (SELECT t.tablename FROM sync.egress_table t
                      WHERE t.role_name = current_user);

CREATE VIEW sync.egress_tombstone WITH (security_barrier) AS
SELECT tb.tablename, tb.pk, tb.modifiedon, tb.origin
FROM sync.tombstone tb
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR tb.tablename IN (SELECT t.tablename FROM sync.egress_table t
                       WHERE t.role_name = current_user);

-- A destination's own token at this region (how much of the destination it has applied),
-- for conflict detection; nothing about other peers.
CREATE VIEW sync.egress_peer_state WITH (security_barrier) AS
SELECT p.peer, p.token
FROM sync.peer_state p
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR p.peer = (SELECT r.region FROM sync.egress_role r WHERE r.role_name = current_user);

-- What the connected destination role may read (empty for any other role).
CREATE VIEW sync.egress_grants AS
SELECT t.tablename, t.columns, t.row_filter, r.policy_sha
FROM sync.egress_table t JOIN sync.egress_role r USING (role_name)
WHERE t.role_name = current_user;

CREATE VIEW sync.egress_me AS
SELECT r.region, r.policy_sha FROM sync.egress_role r WHERE r.role_name = current_user;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP VIEW sync.egress_me, sync.egress_grants, sync.egress_peer_state, "
               "sync.egress_tombstone, sync.egress_change_set; "
               "DROP TABLE sync.egress_table, sync.egress_role")
