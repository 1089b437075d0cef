"""Policy audit trail: per-page integration log, retractions, the policy view per peer.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- One row per applied page: which policy filtered it (the receiver's record of each transfer).
    CREATE TABLE sync.integration_log (
        id          bigserial PRIMARY KEY,
        peer        text        NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now(),
        kind        text        NOT NULL CHECK (kind IN ('delta', 'initial', 'backfill', 'retry')),
        rows        integer     NOT NULL,
        policy_sha  text        NOT NULL,
        token       text
    );
    CREATE INDEX integration_log_peer ON sync.integration_log (peer, applied_at);

    -- What `regionsync retract` removed from this region, and under which policy.
    CREATE TABLE sync.retraction_log (
        id          bigserial PRIMARY KEY,
        retracted_at timestamptz NOT NULL DEFAULT now(),
        tablename   text        NOT NULL,
        origin      text        NOT NULL,
        action      text        NOT NULL CHECK (action IN ('null_columns', 'delete_rows')),
        columns     text[],
        rows        integer     NOT NULL,
        reason      text        NOT NULL,
        policy_sha  text        NOT NULL
    );

    -- What the policy let this peer send us when we last applied from it; a wider view
    -- under a new policy means a backfill of rows that were held back.
    ALTER TABLE sync.peer_state ADD COLUMN policy_view jsonb;

    -- Columns a peer used to send us and no longer may: values there in rows that peer
    -- last wrote came from it under an older policy (`regionsync policy drift`).
    CREATE TABLE sync.narrowed_column (
        peer        text        NOT NULL,
        tablename   text        NOT NULL,
        column_name text        NOT NULL,
        narrowed_at timestamptz NOT NULL DEFAULT now(),
        policy_sha  text        NOT NULL,
        PRIMARY KEY (peer, tablename, column_name)
    );
    """)


def downgrade() -> None:
    op.execute("ALTER TABLE sync.peer_state DROP COLUMN policy_view")
    op.execute("DROP TABLE sync.narrowed_column, sync.retraction_log, sync.integration_log")
