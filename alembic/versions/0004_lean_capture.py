"""Lean capture: a journal entry per statement, no row trigger on inserts or on apply.

Three measured costs of 0003's capture, and what replaces them:

1. One journal row (a heap tuple and three index entries) per changed row was most of
   what capture cost a source write: 100 transactions of 1,000 single-column UPDATEs ran
   at 69k rows/s with it, 82k with one journal row per statement, 120k without capture.
   The AFTER statement triggers now append, per statement and origin, the keys and their
   new versions as parallel arrays to ``sync.change_set``. ``sync.change_log`` becomes a
   view with the per-key shape the journal had (versionnumber, table, key, op, origin,
   txid, time), for operators and tests. (The journal's ``modifiedon`` copy is gone;
   nothing read it: a delete's time is in ``sync.tombstone``.)
2. The plpgsql BEFORE row trigger was a third of an applied upsert's time, and for an
   applied row it only draws the next ``versionnumber``. Its WHEN clause (evaluated in C)
   now skips it while ``regionsync.stamped`` is on — set per transaction by apply, whose
   upserts write ``versionnumber`` from the sequence themselves.
3. Any BEFORE row trigger on INSERT makes COPY insert row by row (no multi-insert), which
   held an initial load to 226k rows/s against 283k without it. Inserts now take the
   system columns from column defaults (``versionnumber`` from the sequence,
   ``modifiedon`` the clock, ``sync_origin`` this region), so the BEFORE trigger is
   UPDATE-only. A local INSERT that sets those columns itself is stamped afterwards by
   the AFTER statement trigger (an UPDATE of that statement's rows), so a writer still
   cannot choose a row's origin, win last-writer-wins with a made-up time, or hide later
   updates behind a made-up version — as before.

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
CREATE TABLE sync.change_set (
    id          bigserial   PRIMARY KEY,
    tablename   text        NOT NULL,
    op          char(1)     NOT NULL CHECK (op IN ('i', 'u', 'd')),
    origin      text        NOT NULL,
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    pks         uuid[]      NOT NULL,
    versions    bigint[]    NOT NULL,   -- the rows' versionnumber, parallel to pks
    CHECK (cardinality(pks) = cardinality(versions))
);
-- Polls read by origin since a token; apply looks for local changes a peer never saw.
CREATE INDEX change_set_origin_txid ON sync.change_set (origin, txid);

INSERT INTO sync.change_set (tablename, op, origin, txid, changed_at, pks, versions)
SELECT tablename, op, origin, txid, min(changed_at),
       array_agg(pk ORDER BY versionnumber), array_agg(versionnumber ORDER BY versionnumber)
FROM sync.change_log GROUP BY tablename, op, origin, txid;
DROP TABLE sync.change_log;

CREATE VIEW sync.change_log AS
SELECT u.versionnumber, c.tablename, u.pk, c.op, c.origin, c.txid, c.changed_at
FROM sync.change_set c CROSS JOIN LATERAL unnest(c.pks, c.versions) AS u(pk, versionnumber);
COMMENT ON VIEW sync.change_log IS
    'The change tracking journal, one row per changed key (stored per statement in sync.change_set)';

CREATE OR REPLACE FUNCTION sync.enable_change_tracking(p_table text) RETURNS void
LANGUAGE plpgsql AS $enable$
DECLARE
    pkcol text := p_table || 'id';
BEGIN
    -- BEFORE UPDATE, per row: versions and provenance. Skipped (WHEN, no plpgsql call)
    -- while regionsync.stamped is on: apply's upserts write versionnumber themselves.
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            applying text := nullif(current_setting('regionsync.origin', true), '');
        BEGIN
            NEW.versionnumber := OLD.versionnumber;
            IF applying IS NULL THEN
                NEW.modifiedon := OLD.modifiedon;
                NEW.sync_origin := OLD.sync_origin;
                NEW.createdon := OLD.createdon;
            END IF;
            IF NEW IS NOT DISTINCT FROM OLD THEN
                RETURN NEW;  -- no-op update: same version, no journal entry
            END IF;
            NEW.versionnumber := nextval('sync.versionnumber_seq');
            IF applying IS NULL THEN
                NEW.modifiedon := clock_timestamp();
                NEW.sync_origin := coalesce(
                    nullif(current_setting('regionsync.region_cache', true), ''),
                    sync.local_region());
            END IF;
            RETURN NEW;
        END $body$ $fn$, 'capture_before_' || p_table);

    -- AFTER, per statement: one journal entry per origin, keys and versions as arrays.
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            applying text := nullif(current_setting('regionsync.origin', true), '');
            here text;
            stamped text;
        BEGIN
            -- an apply that forwards nothing (mesh member, spoke) journals nothing
            IF current_setting('regionsync.journal', true) = 'off' THEN
                RETURN NULL;
            END IF;
            IF TG_OP = 'INSERT' AND applying IS NULL THEN
                -- a local insert took its system columns from the defaults. If its writer
                -- set them itself (another origin, a time outside this statement, a
                -- version the sequence has not reached: later updates would not look
                -- newer), the statement's rows are stamped as local writes now.
                here := sync.local_region();
                IF EXISTS (SELECT 1 FROM new_rows n
                           WHERE n.sync_origin IS DISTINCT FROM here
                              OR n.modifiedon < statement_timestamp()
                              OR n.modifiedon > clock_timestamp()
                              OR n.versionnumber > (SELECT last_value
                                                    FROM sync.versionnumber_seq)) THEN
                    stamped := current_setting('regionsync.stamped', true);
                    PERFORM set_config('regionsync.stamped', 'on', true),
                            set_config('regionsync.journal', 'off', true);
                    UPDATE public.%3$I t
                    SET sync_origin = here, modifiedon = clock_timestamp(),
                        versionnumber = nextval('sync.versionnumber_seq')
                    FROM new_rows n WHERE t.%2$I = n.%2$I;
                    PERFORM set_config('regionsync.stamped', coalesce(stamped, ''), true),
                            set_config('regionsync.journal', '', true);
                    INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                    SELECT TG_TABLE_NAME, 'i', here, array_agg(t.%2$I), array_agg(t.versionnumber)
                    FROM public.%3$I t JOIN new_rows n ON t.%2$I = n.%2$I HAVING count(*) > 0;
                    RETURN NULL;
                END IF;
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                SELECT TG_TABLE_NAME, 'i', here, array_agg(n.%2$I), array_agg(n.versionnumber)
                FROM new_rows n HAVING count(*) > 0;
            ELSIF TG_OP = 'INSERT' THEN
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                SELECT TG_TABLE_NAME, 'i', n.sync_origin, array_agg(n.%2$I),
                       array_agg(n.versionnumber)
                FROM new_rows n GROUP BY n.sync_origin;
            ELSIF TG_OP = 'UPDATE' THEN
                -- changed rows have versions newer than every old version of the statement
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                SELECT TG_TABLE_NAME, 'u', n.sync_origin, array_agg(n.%2$I),
                       array_agg(n.versionnumber)
                FROM new_rows n
                WHERE n.versionnumber > (SELECT coalesce(max(o.versionnumber), 0) FROM old_rows o)
                GROUP BY n.sync_origin;
            ELSIF applying IS NULL THEN
                -- local delete: tombstones (time, this region), then the journal
                WITH tomb AS (
                    INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin)
                    SELECT TG_TABLE_NAME, o.%2$I, clock_timestamp(), sync.local_region()
                    FROM old_rows o
                    ON CONFLICT (tablename, pk) DO UPDATE
                        SET modifiedon = EXCLUDED.modifiedon, origin = EXCLUDED.origin
                    RETURNING tb.pk, tb.origin)
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                SELECT TG_TABLE_NAME, 'd', origin, array_agg(pk),
                       array_agg(nextval('sync.versionnumber_seq'))
                FROM tomb GROUP BY origin;
            ELSE
                -- apply (or retract): the deletion's origin was recorded by the caller in
                -- sync.tombstone; without one, the applying origin
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                SELECT TG_TABLE_NAME, 'd', d.origin, array_agg(d.pk),
                       array_agg(nextval('sync.versionnumber_seq'))
                FROM (SELECT o.%2$I AS pk, coalesce(tb.origin, applying) AS origin
                      FROM old_rows o
                      LEFT JOIN sync.tombstone tb
                             ON tb.tablename = TG_TABLE_NAME AND tb.pk = o.%2$I) d
                GROUP BY d.origin;
            END IF;
            RETURN NULL;
        END $body$ $fn$, 'capture_after_' || p_table, pkcol, p_table);

    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_before ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_insert ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_update ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_delete ON public.%I', p_table);
    -- inserts: system columns from defaults (no BEFORE INSERT trigger: COPY stays bulk)
    EXECUTE format('ALTER TABLE public.%I '
                   'ALTER COLUMN versionnumber SET DEFAULT nextval(''sync.versionnumber_seq''), '
                   'ALTER COLUMN modifiedon SET DEFAULT clock_timestamp(), '
                   'ALTER COLUMN sync_origin SET DEFAULT sync.local_region()', p_table);
    EXECUTE format(
        'CREATE TRIGGER regionsync_capture_before BEFORE UPDATE ON public.%I '
        'FOR EACH ROW WHEN (current_setting(''regionsync.stamped'', true) IS DISTINCT FROM ''on'') '
        'EXECUTE FUNCTION sync.%I()', p_table, 'capture_before_' || p_table);
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
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    raise NotImplementedError("0004 changes the journal's storage; restore from a backup")
