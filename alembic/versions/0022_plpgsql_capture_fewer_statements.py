"""The PL/pgSQL BEFORE UPDATE trigger runs fewer interpreted statements per row: the
change mask in one expression, the system and version columns reset only when the
statement set one of them, one mask test per four stamps (the generator's text in
``sync/capture/sql/functions/sync.enable_plpgsql_capture.sql``). The same columns are
stamped and journaled as before; re-creating the triggers is all a database needs.
Tables on the C path keep their triggers (``enable_change_tracking`` chooses).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from alembic import op
from sync.capture import objects

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

PINNED = {
    "functions/sync.enable_plpgsql_capture.sql": "b1337f3ed59fccc3",
}


def upgrade() -> None:
    objects.apply(op.get_bind(), PINNED)
    op.execute("SELECT sync.enable_change_tracking(tablename) FROM sync.tracked_table")


def downgrade() -> None:
    raise NotImplementedError("0022 re-creates capture triggers; restore from a backup")
