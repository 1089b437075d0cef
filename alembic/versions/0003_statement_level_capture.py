"""Statement-level capture: journal entries written per statement from transition tables.

The row-level AFTER trigger ran one plpgsql call and one INSERT per changed row; this
writes the journal with one INSERT … SELECT per statement (per table and operation),
which is most of the cost of capture on the source and of apply on the target. The
BEFORE row trigger stays (it assigns versionnumber, modifiedon and sync_origin, and
keeps a no-op update's version), and a changed row is recognised exactly by
``new.versionnumber > max(old.versionnumber)``: new versions come from the sequence, so
they exceed every version the statement's old rows had.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The region name, cached per session (a per-row SELECT showed up in capture profiles).
CREATE OR REPLACE FUNCTION sync.local_region() RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE r text := nullif(current_setting('regionsync.region_cache', true), '');
BEGIN
    IF r IS NULL THEN
        SELECT region INTO r FROM sync.settings;
        IF r IS NULL THEN
            RAISE EXCEPTION 'regionsync: this database has no region name; run `regionsync migrate --config region.yaml`';
        END IF;
        PERFORM set_config('regionsync.region_cache', r, false);
    END IF;
    RETURN r;
END $$;

CREATE OR REPLACE FUNCTION sync.enable_change_tracking(p_table text) RETURNS void
LANGUAGE plpgsql AS $enable$
DECLARE
    pkcol text := p_table || 'id';
BEGIN
    -- BEFORE, per row: versions and provenance (unchanged from 0001).
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            applying text := nullif(current_setting('regionsync.origin', true), '');
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                NEW.versionnumber := OLD.versionnumber;
                IF applying IS NULL THEN
                    NEW.modifiedon := OLD.modifiedon;
                    NEW.sync_origin := OLD.sync_origin;
                    NEW.createdon := OLD.createdon;
                END IF;
                IF NEW IS NOT DISTINCT FROM OLD THEN
                    RETURN NEW;  -- no-op update: same version, no journal entry
                END IF;
            END IF;
            NEW.versionnumber := nextval('sync.versionnumber_seq');
            IF applying IS NULL THEN
                NEW.modifiedon := clock_timestamp();
                NEW.sync_origin := coalesce(
                    nullif(current_setting('regionsync.region_cache', true), ''),
                    sync.local_region());
                IF TG_OP = 'INSERT' THEN
                    NEW.createdon := coalesce(NEW.createdon, NEW.modifiedon);
                END IF;
            END IF;
            RETURN NEW;
        END $body$ $fn$, 'capture_before_' || p_table);

    -- AFTER, per statement: the journal from the transition tables.
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            -- an apply that forwards nothing (mesh member, spoke) journals nothing
            IF current_setting('regionsync.journal', true) = 'off' THEN
                RETURN NULL;
            END IF;
            IF TG_OP = 'INSERT' THEN
                INSERT INTO sync.change_log (versionnumber, tablename, pk, op, origin, modifiedon)
                SELECT n.versionnumber, TG_TABLE_NAME, n.%2$I, 'i', n.sync_origin, n.modifiedon
                FROM new_rows n;
            ELSIF TG_OP = 'UPDATE' THEN
                INSERT INTO sync.change_log (versionnumber, tablename, pk, op, origin, modifiedon)
                SELECT n.versionnumber, TG_TABLE_NAME, n.%2$I, 'u', n.sync_origin, n.modifiedon
                FROM new_rows n
                WHERE n.versionnumber > (SELECT coalesce(max(o.versionnumber), 0) FROM old_rows o);
            ELSIF nullif(current_setting('regionsync.origin', true), '') IS NULL THEN
                -- local delete: tombstones (time, this region), then the journal
                WITH tomb AS (
                    INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin)
                    SELECT TG_TABLE_NAME, o.%2$I, clock_timestamp(), sync.local_region()
                    FROM old_rows o
                    ON CONFLICT (tablename, pk) DO UPDATE
                        SET modifiedon = EXCLUDED.modifiedon, origin = EXCLUDED.origin
                    RETURNING tb.pk, tb.modifiedon, tb.origin)
                INSERT INTO sync.change_log (versionnumber, tablename, pk, op, origin, modifiedon)
                SELECT nextval('sync.versionnumber_seq'), TG_TABLE_NAME, pk, 'd', origin,
                       modifiedon
                FROM tomb;
            ELSE
                -- apply (or retract): the deletion's time and origin were recorded by the
                -- caller in sync.tombstone; without one, the applying origin and now
                INSERT INTO sync.change_log (versionnumber, tablename, pk, op, origin, modifiedon)
                SELECT nextval('sync.versionnumber_seq'), TG_TABLE_NAME, o.%2$I, 'd',
                       coalesce(tb.origin, current_setting('regionsync.origin')),
                       coalesce(tb.modifiedon, clock_timestamp())
                FROM old_rows o
                LEFT JOIN sync.tombstone tb ON tb.tablename = TG_TABLE_NAME AND tb.pk = o.%2$I;
            END IF;
            RETURN NULL;
        END $body$ $fn$, 'capture_after_' || p_table, pkcol);

    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_before ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_after ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_insert ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_update ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_delete ON public.%I', p_table);
    EXECUTE format('CREATE TRIGGER regionsync_capture_before BEFORE INSERT OR UPDATE ON public.%I '
                   'FOR EACH ROW EXECUTE FUNCTION sync.%I()', p_table, 'capture_before_' || p_table);
    EXECUTE format('CREATE TRIGGER regionsync_capture_insert AFTER INSERT ON public.%I '
                   'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.%I()', p_table, 'capture_after_' || p_table);
    EXECUTE format('CREATE TRIGGER regionsync_capture_update AFTER UPDATE ON public.%I '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.%I()', p_table, 'capture_after_' || p_table);
    EXECUTE format('CREATE TRIGGER regionsync_capture_delete AFTER DELETE ON public.%I '
                   'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.%I()', p_table, 'capture_after_' || p_table);
    INSERT INTO sync.tracked_table (tablename, pk_column) VALUES (p_table, pkcol)
    ON CONFLICT (tablename) DO NOTHING;
END $enable$;

SELECT sync.enable_change_tracking(tablename) FROM sync.tracked_table;

-- Nothing reads the journal by (table, key) any more. Reads by origin do: a mesh poll
-- (origin = peer since a token) and apply's check for local versions a peer never saw.
DROP INDEX IF EXISTS sync.change_log_key;
CREATE INDEX change_log_origin_txid ON sync.change_log (origin, txid);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    raise NotImplementedError("0003 replaces the capture triggers; restore from 0002 by "
                              "re-running 0001's sync.enable_change_tracking definition")
