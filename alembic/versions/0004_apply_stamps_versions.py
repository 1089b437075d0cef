"""Apply stamps its own versions: the BEFORE row trigger is skipped for regionsync's writes.

Profiles of a 5,000-row page showed a third of the upsert's time in the plpgsql BEFORE
trigger, which for an applied row only draws the next ``versionnumber``. The set-based
statement can do that itself, so the trigger gets a WHEN clause (evaluated in C, no
plpgsql call) that skips it while ``regionsync.stamped`` is ``on`` — set, per transaction,
only by apply's upserts, which then write ``versionnumber`` from the sequence. Local
writes, retraction and backfill are unchanged: they leave the flag off.

``versionnumber`` also defaults to the sequence, so a row inserted with the trigger
skipped (apply's COPY into an empty table) still gets a fresh version.

``sync.enable_change_tracking`` keeps 0003's body (renamed ``enable_change_tracking_0003``)
and adds the WHEN clause and default on top, so the trigger bodies are defined once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER FUNCTION sync.enable_change_tracking(text) RENAME TO enable_change_tracking_0003;

CREATE FUNCTION sync.enable_change_tracking(p_table text) RETURNS void
LANGUAGE plpgsql AS $enable$
BEGIN
    PERFORM sync.enable_change_tracking_0003(p_table);
    EXECUTE format('DROP TRIGGER regionsync_capture_before ON public.%I', p_table);
    EXECUTE format(
        'CREATE TRIGGER regionsync_capture_before BEFORE INSERT OR UPDATE ON public.%I '
        'FOR EACH ROW WHEN (current_setting(''regionsync.stamped'', true) IS DISTINCT FROM ''on'') '
        'EXECUTE FUNCTION sync.%I()', p_table, 'capture_before_' || p_table);
    EXECUTE format('ALTER TABLE public.%I ALTER COLUMN versionnumber '
                   'SET DEFAULT nextval(''sync.versionnumber_seq'')', p_table);
END $enable$;

SELECT sync.enable_change_tracking(tablename) FROM sync.tracked_table;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    raise NotImplementedError("0004 changes the capture trigger in place; restore from a backup")
