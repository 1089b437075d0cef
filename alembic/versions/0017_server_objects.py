"""Every server-side object from its one current file (``sync/capture/sql/``).

Until 0016 the functions and views the database runs were written inside migrations,
and the PL/pgSQL trigger generator was built by migrations that loaded earlier ones and
string-patched them (0007 -> 0009 -> 0014 -> 0016). This migration re-creates every
function and view from its file (except ``sync.egress_mark``, whose body each region makes
from its own policy: re-creating it here would blank a live region's row-filter marking
until its next policy load) — the same definitions, now written down once — and
re-attaches each tracked table's triggers from the generator. From here on, a migration
that changes an object edits its file and pins the new digest here-style
(``sync.capture.objects.apply``); no migration imports another.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""

from alembic import op
from sync.capture import objects

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

PINNED = {
    "functions/sync.capture_kind.sql": "f00dcdd56552c8cd",
    "functions/sync.egress_admit.sql": "8cc3e440ace4d57b",
    "functions/sync.egress_changes.sql": "3630da607c185c8f",
    "functions/sync.egress_held.sql": "a41d870f685ffc49",
    "functions/sync.egress_prepare.sql": "18f45948ab8a751b",
    "functions/sync.enable_c_capture.sql": "aad41714e287a669",
    "functions/sync.enable_change_tracking.sql": "b22eed1de78f3cf3",
    "functions/sync.enable_plpgsql_capture.sql": "81289719cd90b2cd",
    "functions/sync.journal_since.sql": "8b0bef46a8a05e48",
    "functions/sync.key_lock_space.sql": "4a910aab9102a6c9",
    "functions/sync.local_region.sql": "e44567a00447d897",
    "functions/sync.lock_key_stripes.sql": "bac41770caf1f225",
    "functions/sync.record_egress.sql": "45e8939f225bbd28",
    "functions/sync.refuse_truncate.sql": "3787d5bd31c58a61",
    "views/sync.change_log.sql": "4ae7249e78d572d5",
    "views/sync.egress_change_set.sql": "d5d907315578163c",
    "views/sync.egress_erasure.sql": "b1d272f4aca65807",
    "views/sync.egress_erasure_log.sql": "2c57ba05168be657",
    "views/sync.egress_grants.sql": "be457a016e58f750",
    "views/sync.egress_horizon.sql": "1aa65a332292ef92",
    "views/sync.egress_me.sql": "5cf4a507a923ca94",
    "views/sync.egress_peer_state.sql": "2bdaeda004b36e01",
    "views/sync.egress_tombstone.sql": "b6ee18ad65dfbb9a",
}


def upgrade() -> None:
    objects.apply(op.get_bind(), PINNED)
    op.execute("SELECT sync.enable_change_tracking(tablename) FROM sync.tracked_table")


def downgrade() -> None:
    raise NotImplementedError("0017 re-creates the server-side objects; restore from a backup")
