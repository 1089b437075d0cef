"""The owner says which wire protocol versions it serves (``sync.protocol_versions()``).

A receiver asks before its first batch and stops only that link, naming both sides'
versions and what to upgrade first, when they do not overlap (sync/protocol.py). An owner
without the function serves protocol 1 (0.1.0: row-level versions).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03
"""

from alembic import op
from sync.capture import objects

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

PINNED = {
    "functions/sync.protocol_versions.sql": "7c18bc3c2450030a",
}


def upgrade() -> None:
    objects.apply(op.get_bind(), PINNED)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS sync.protocol_versions()")
