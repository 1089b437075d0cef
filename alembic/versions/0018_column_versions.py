"""Per-column versions: every data column of a tracked table gets its own version, so
concurrent edits of different columns both survive and an edit of a column that never
leaves its region neither shadows another region's edit nor is heard of abroad.

Adds ``sync.change_set.cols`` (the columns a journal entry's rows changed) and
``sync.egress_table.colmask`` (the columns a destination is sent),
``sync.conflict_log.columns`` (which columns lost, with both versions), the functions of
``sync/capture/sql/`` that changed, and each tracked table's version columns, base version
(existing rows: their current row version) and triggers.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""

from alembic import op
from sync.capture import objects

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

PINNED = {
    "functions/sync.version_text.sql": "90d6f6a8efc50ff6",
    "functions/sync.enable_column_versions.sql": "d200ab80ce6865b4",
    "functions/sync.enable_plpgsql_capture.sql": "2a0bd56dec861063",
    "functions/sync.egress_changes.sql": "4736b9a3b1dd0ed9",
}


def upgrade() -> None:
    op.execute("ALTER TABLE sync.change_set ADD COLUMN IF NOT EXISTS cols bigint")
    op.execute("ALTER TABLE sync.egress_table ADD COLUMN IF NOT EXISTS colmask bigint")
    # per column that lost: both versions (time and origin), no values
    op.execute("ALTER TABLE sync.conflict_log ADD COLUMN IF NOT EXISTS columns jsonb")
    objects.apply(op.get_bind(), PINNED)
    op.execute("SELECT sync.enable_change_tracking(tablename) FROM sync.tracked_table")


def downgrade() -> None:
    raise NotImplementedError("0018 adds per-column versions; restore from a backup")
