"""Convergence under concurrency: key-stripe locks, versions that never go backwards,
TRUNCATE refused.

Last-writer-wins is only as good as the state each decision is made against. Under READ
COMMITTED an applier's "is there a newer tombstone?" looked at a snapshot that could not
see a delete committing at the same moment, so an older version came back (resurrection),
and a local write could take a time older than the version it replaced (skew, or a
re-insert after a delete that arrived from a region whose clock is ahead). What changes:

1. **Key stripes.** Every key of a tracked table falls in one of 256 stripes
   (``uuid_hash(pk) & 255``) of a per-table lock space. Whoever decides about a key that
   may be *absent* takes the stripe's transaction-level advisory lock first, in one global
   order (space, stripe), and decides with a fresh snapshot after it: apply's deletes take
   it exclusively, apply's upserts and the application's inserts share it. So a delete
   and an insert of the same key are never decided at once, while upserts from several
   peers, apply lanes and application inserts never wait for each other. A key that is
   *present* is already serialised by its row lock (ON CONFLICT and DELETE re-check the
   newest committed row version); the one gap there — a row deleted by the application
   while apply's ON CONFLICT waited for it, then re-inserted by apply — is closed by
   apply re-checking the rows it inserted against the tombstones in a later statement.
   256 stripes bound the locks one transaction holds (PostgreSQL's lock table is shared
   and sized by max_locks_per_transaction).
2. **Versions never go backwards** (a hybrid logical clock): a local update takes
   ``greatest(clock, old modifiedon + 1 µs)``, a local delete's tombstone likewise, and a
   local insert of a key with a tombstone at least as new is stamped just past it. A
   region therefore never writes a version that every other region would reject.
3. **TRUNCATE** of a tracked table is refused: it fires no row or transition-table
   triggers, so it would delete rows here that every other region keeps. Use DELETE
   (captured, with tombstones), or `regionsync retract` for copies.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The lock space of a table's keys (first advisory-lock key); the stripe is the second.
CREATE FUNCTION sync.key_lock_space(p_table text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtext('regionsync.keys.' || p_table) $$;

-- Take stripe locks in the order given (callers sort by space, stripe): exclusive where
-- p_exclusive is true, shared otherwise. A loop, so the order is the array's, not a plan's.
CREATE FUNCTION sync.lock_key_stripes(p_spaces integer[], p_stripes integer[],
                                      p_exclusive boolean[]) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_spaces), 0) LOOP
        IF p_exclusive[i] THEN
            PERFORM pg_advisory_xact_lock(p_spaces[i], p_stripes[i]);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(p_spaces[i], p_stripes[i]);
        END IF;
    END LOOP;
    RETURN coalesce(cardinality(p_spaces), 0);
END $$;

CREATE FUNCTION sync.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'regionsync: TRUNCATE of tracked table %.% is not captured and would make '
                    'this region diverge from its peers', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'feature_not_supported',
              HINT = 'DELETE the rows instead (captured, with tombstones), or stop tracking '
                     'the table first.';
END $$;

CREATE OR REPLACE FUNCTION sync.enable_change_tracking(p_table text) RETURNS void
LANGUAGE plpgsql AS $enable$
DECLARE
    pkcol text := p_table || 'id';
    space integer := sync.key_lock_space(p_table);
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
                -- never older than the version it replaces, whatever the clocks say
                NEW.modifiedon := greatest(clock_timestamp(),
                                           OLD.modifiedon + interval '1 microsecond');
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
                here := sync.local_region();
                -- share the inserted keys' stripes: an applier deleting one of them
                -- finishes first (and we see its tombstone below), or waits for us
                PERFORM sync.lock_key_stripes(array_agg(%4$s), array_agg(s.stripe),
                                              array_agg(false))
                FROM (SELECT DISTINCT uuid_hash(n.%2$I) & 255 AS stripe
                      FROM new_rows n ORDER BY 1) s;
                -- a local insert took its system columns from the defaults. If its writer
                -- set them itself (another origin, a time outside this statement, a
                -- version the sequence has not reached), or a tombstone of the key is at
                -- least as new (a re-insert after a delete from a clock ahead of ours),
                -- the statement's rows are stamped as local writes now, past any tombstone.
                IF EXISTS (SELECT 1 FROM new_rows n
                           WHERE n.sync_origin IS DISTINCT FROM here
                              OR n.modifiedon < statement_timestamp()
                              OR n.modifiedon > clock_timestamp()
                              OR n.versionnumber > (SELECT last_value
                                                    FROM sync.versionnumber_seq))
                   OR EXISTS (SELECT 1 FROM new_rows n JOIN sync.tombstone tb
                                ON tb.tablename = TG_TABLE_NAME AND tb.pk = n.%2$I
                              WHERE (tb.modifiedon, tb.origin) >= (n.modifiedon, here)) THEN
                    stamped := current_setting('regionsync.stamped', true);
                    PERFORM set_config('regionsync.stamped', 'on', true),
                            set_config('regionsync.journal', 'off', true);
                    UPDATE public.%3$I t
                    SET sync_origin = here,
                        modifiedon = greatest(clock_timestamp(),
                                              (SELECT tb.modifiedon + interval '1 microsecond'
                                               FROM sync.tombstone tb
                                               WHERE tb.tablename = TG_TABLE_NAME
                                                 AND tb.pk = n.%2$I)),
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
                -- local delete: tombstones newer than the row they end (whatever the
                -- clocks say), then the journal
                WITH tomb AS (
                    INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin)
                    SELECT TG_TABLE_NAME, o.%2$I,
                           greatest(clock_timestamp(), o.modifiedon + interval '1 microsecond'),
                           sync.local_region()
                    FROM old_rows o
                    ON CONFLICT (tablename, pk) DO UPDATE
                        SET modifiedon = greatest(EXCLUDED.modifiedon,
                                                  tb.modifiedon + interval '1 microsecond'),
                            origin = EXCLUDED.origin
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
        END $body$ $fn$, 'capture_after_' || p_table, pkcol, p_table, space);

    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_before ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_insert ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_update ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_delete ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_refuse_truncate ON public.%I', p_table);
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
    EXECUTE format('CREATE TRIGGER regionsync_refuse_truncate BEFORE TRUNCATE ON public.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION sync.refuse_truncate()', p_table);
    INSERT INTO sync.tracked_table (tablename, pk_column) VALUES (p_table, pkcol)
    ON CONFLICT (tablename) DO NOTHING;
END $enable$;

SELECT sync.enable_change_tracking(tablename) FROM sync.tracked_table;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    raise NotImplementedError("0005 replaces the capture triggers; restore from a backup")
