"""Retention: what pruning needs, and how a destination learns its token expired.

The owner prunes journal entries once every peer has consumed them and they are older
than ``retention.journal``, and any older than ``retention.expire_after`` (a peer away
that long loses its place, as Dataverse's change tracking does after seven days). The
newest transaction pruned that way is the journal's *horizon*: a destination whose token
is older (``pg_snapshot_xmin(token) <= pruned_xid``) has expired and reloads.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE sync.journal_horizon (
    only_row   boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    pruned_xid xid8        NOT NULL,
    pruned_at  timestamptz NOT NULL DEFAULT now()
);
CREATE VIEW sync.egress_horizon AS SELECT h.pruned_xid, h.pruned_at FROM sync.journal_horizon h;

CREATE INDEX change_set_changed_at ON sync.change_set (changed_at);
CREATE INDEX tombstone_modifiedon ON sync.tombstone (modifiedon);
CREATE INDEX conflict_log_logged_at ON sync.conflict_log (logged_at);
CREATE INDEX dead_letter_last_failed ON sync.dead_letter (last_failed_at);
CREATE INDEX integration_log_applied_at ON sync.integration_log (applied_at);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP INDEX sync.integration_log_applied_at, sync.dead_letter_last_failed, "
               "sync.conflict_log_logged_at, sync.tombstone_modifiedon, "
               "sync.change_set_changed_at; DROP VIEW sync.egress_horizon; "
               "DROP TABLE sync.journal_horizon")
