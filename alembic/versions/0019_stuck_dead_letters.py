"""Dead letters that cannot heal say so, and conflicts say what decided them.

``sync.dead_letter.same_failures`` counts the attempts in a row that failed for the same
reason (SQLSTATE and error text); at ``STUCK_AFTER`` (sync/db/state.py) ``stuck_at`` is
set, the metric ``regionsync_dead_letters_stuck`` counts it and `regionsync dlq list`
says what to do. ``sync.conflict_log.reason`` names a decision that was not
last-writer-wins (an alternate key claimed first by another row, sync/apply/altkeys.py).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE sync.dead_letter "
               "ADD COLUMN IF NOT EXISTS same_failures integer NOT NULL DEFAULT 1, "
               "ADD COLUMN IF NOT EXISTS stuck_at timestamptz")
    op.execute("ALTER TABLE sync.conflict_log ADD COLUMN IF NOT EXISTS reason text")


def downgrade() -> None:
    op.execute("ALTER TABLE sync.dead_letter DROP COLUMN IF EXISTS same_failures, "
               "DROP COLUMN IF EXISTS stuck_at")
    op.execute("ALTER TABLE sync.conflict_log DROP COLUMN IF EXISTS reason")
