"""Erasure across regions (`regionsync forget`): requests, receipts, immortal tombstones.

The region where `forget` runs deletes the record (and its region-local children), sets
its tombstone's time to ``infinity`` — a tombstone no version can ever beat, so no region
can resurrect the key, whatever its clock — and records an erasure request
(``sync.erasure``). Every region that receives the table reads the requests through
``sync.egress_erasure`` (like the journal: only tables it receives, and for a row-filtered
table only keys it was sent) in the batch that carries the delete, removes every value of
the record it holds besides the row (conflict log, dead letters, the key in older journal
entries), and writes a receipt (``sync.erasure_log``), which the requesting region reads
back through ``sync.egress_erasure_log``. What remains anywhere is what prevents
resurrection and holds no personal data: the key, in the tombstone and in the delete's
journal entry, and the receipts.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE sync.erasure (
    id           bigserial   PRIMARY KEY,
    tablename    text        NOT NULL,
    pk           uuid        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    txid         xid8        NOT NULL DEFAULT pg_current_xact_id()
);

CREATE TABLE sync.erasure_log (
    id           bigserial   PRIMARY KEY,
    requested_by text        NOT NULL,           -- the region whose `forget` asked
    request_id   bigint      NOT NULL,           -- its sync.erasure id
    tablename    text        NOT NULL,
    pk           uuid        NOT NULL,
    region       text        NOT NULL,           -- where this receipt was written
    erased_at    timestamptz NOT NULL DEFAULT now(),
    removed      jsonb       NOT NULL,           -- {"conflict_log": 2, "dead_letter": 0, ...}
    UNIQUE (requested_by, request_id)
);

-- the last erasure request of each peer this region has carried out
ALTER TABLE sync.peer_state ADD COLUMN erasure_seen bigint NOT NULL DEFAULT 0;

CREATE VIEW sync.egress_erasure WITH (security_barrier) AS
SELECT e.id, e.tablename, e.pk, e.txid
FROM sync.erasure e
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR EXISTS (SELECT 1 FROM sync.egress_table t
              WHERE t.role_name = current_user AND t.tablename = e.tablename
                AND (t.row_filter IS NULL
                     OR EXISTS (SELECT 1 FROM sync.egress_sent s
                                WHERE s.role_name = current_user
                                  AND s.tablename = e.tablename AND s.pk = e.pk)));

CREATE VIEW sync.egress_erasure_log WITH (security_barrier) AS
SELECT l.requested_by, l.request_id, l.tablename, l.pk, l.region, l.erased_at, l.removed
FROM sync.erasure_log l
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR l.requested_by = (SELECT r.region FROM sync.egress_role r
                        WHERE r.role_name = current_user);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP VIEW sync.egress_erasure_log, sync.egress_erasure; "
               "ALTER TABLE sync.peer_state DROP COLUMN erasure_seen; "
               "DROP TABLE sync.erasure_log, sync.erasure")
