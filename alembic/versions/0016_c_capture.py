"""Capture triggers in C where the server has them, PL/pgSQL where it does not.

What change tracking cost the application's own writes was mostly interpretation: the
PL/pgSQL BEFORE UPDATE row trigger (a function call and three expressions per row) and
the statement triggers' interpreter around their journal insert (python -m bench
--capture-tax-only measured 1.2-2.3× per statement shape). ``ext/regionsync_capture`` is
the same contract in C; ``sync.enable_change_tracking`` attaches it when the extension
is installed in the database and the PL/pgSQL triggers otherwise. ``regionsync migrate``
creates or drops the extension according to the config's ``capture:`` (auto, c,
plpgsql) and re-attaches every table's triggers when that changes. The journal's key
and version arrays are stored out of line without compression (both paths gain).

The C triggers are one per event (no WHEN on role membership: the function asks once,
and reads no setting unless the writer is an apply member):

- ``regionsync_capture_before`` BEFORE UPDATE FOR EACH ROW ``sync.capture_before_update(region)``
- ``regionsync_capture_{insert,update,delete}`` AFTER … FOR EACH STATEMENT
  ``sync.capture_after(region, key column, lock space)`` with the transition tables.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

C_CAPTURE = r"""
CREATE OR REPLACE FUNCTION sync.enable_c_capture(p_table text) RETURNS void
LANGUAGE plpgsql AS $enable$
DECLARE
    pkcol text := p_table || 'id';
    space integer := sync.key_lock_space(p_table);
    here text := coalesce((SELECT s.region FROM sync.settings s), '');
    name text;
BEGIN
    -- what both paths share (column defaults for inserts, the TRUNCATE guard, the tracked
    -- table's row) is the PL/pgSQL generator's; then its capture triggers give way
    PERFORM sync.enable_plpgsql_capture(p_table);
    FOREACH name IN ARRAY ARRAY['regionsync_capture_before', 'regionsync_capture_insert',
                                'regionsync_capture_update', 'regionsync_capture_delete'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON public.%I', name, p_table);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON public.%I', name || '_local', p_table);
    END LOOP;
    EXECUTE format('CREATE TRIGGER regionsync_capture_before BEFORE UPDATE ON public.%I '
                   'FOR EACH ROW EXECUTE FUNCTION sync.capture_before_update(%L)',
                   p_table, here);
    EXECUTE format('CREATE TRIGGER regionsync_capture_insert AFTER INSERT ON public.%I '
                   'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.capture_after(%L, %L, %L)',
                   p_table, here, pkcol, space);
    EXECUTE format('CREATE TRIGGER regionsync_capture_update AFTER UPDATE ON public.%I '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.capture_after(%L, %L, %L)',
                   p_table, here, pkcol, space);
    EXECUTE format('CREATE TRIGGER regionsync_capture_delete AFTER DELETE ON public.%I '
                   'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.capture_after(%L, %L, %L)',
                   p_table, here, pkcol, space);
END $enable$;

CREATE OR REPLACE FUNCTION sync.enable_change_tracking(p_table text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF sync.capture_kind() = 'c' THEN
        PERFORM sync.enable_c_capture(p_table);
    ELSE
        PERFORM sync.enable_plpgsql_capture(p_table);
    END IF;
END $$;

-- Which capture triggers new tables get: C when the extension is in this database.
CREATE OR REPLACE FUNCTION sync.capture_kind() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'regionsync_capture')
                THEN 'c' ELSE 'plpgsql' END
$$;
"""


def _plpgsql_function() -> str:
    """0014's generator of the PL/pgSQL triggers, under its own name."""
    spec = importlib.util.spec_from_file_location(
        "regionsync_0014", Path(__file__).with_name("0014_capture_plans.py"))
    assert spec is not None and spec.loader is not None
    m0014 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m0014)
    body = m0014._enable_function()
    head = "CREATE OR REPLACE FUNCTION sync.enable_change_tracking(p_table text)"
    assert body.count(head) == 1, "0014's generator changed; update 0016"
    return body.replace(
        head, "CREATE OR REPLACE FUNCTION sync.enable_plpgsql_capture(p_table text)")


def upgrade() -> None:
    # A statement's keys and versions are arrays: above ~2 kB PostgreSQL tried to pglz
    # them before moving them out of line, and random uuids do not compress (the largest
    # single cost of a 1,000-row statement's journal entry). Out of line, uncompressed.
    op.execute("ALTER TABLE sync.change_set ALTER COLUMN pks SET STORAGE EXTERNAL, "
               "ALTER COLUMN versions SET STORAGE EXTERNAL")
    # Its two CHECKs were re-parsed by every SQL insert (the PL/pgSQL path: 7 µs of each
    # statement's capture); its only writers are the capture triggers, which build both.
    op.execute("ALTER TABLE sync.change_set DROP CONSTRAINT change_set_op_check, "
               "DROP CONSTRAINT change_set_check")
    op.execute(_plpgsql_function())
    op.execute(C_CAPTURE)
    for fn in ("enable_plpgsql_capture", "enable_c_capture", "enable_change_tracking"):
        op.execute(f"REVOKE ALL ON FUNCTION sync.{fn}(text) FROM PUBLIC")


def downgrade() -> None:
    raise NotImplementedError("0016 replaces the capture triggers; restore from a backup")
