-- The generator of the PL/pgSQL capture triggers: `sync.enable_change_tracking(table)`
-- calls it where the C triggers (ext/regionsync_capture) are not installed.
--
-- Per table it writes two variants of each trigger function and attaches each with a
-- WHEN on role membership, so that a setting changes nothing for an application role
-- (invariant 7):
--   * the apply variant (regionsync_apply members, the owner, superusers) honours the
--     settings apply sets: regionsync.origin (the version's origin and time are the
--     peer's), regionsync.journal = 'off' (a mesh member's apply forwards nothing) and
--     regionsync.stamped (the stamping UPDATE below skips the BEFORE trigger);
--   * the local variant (everyone else) reads no setting at all.
-- The AFTER function bodies are format() templates:
--   %1$I function name   %2$I key column   %3$I table   %4$s lock space
--   %5$s region literal  %6$s what `applying` is   %7$s whether the journal is off
--   %10$s an insert that set versions itself             %11$s the versions a stamp resets
--   %12$s this region's origin number (sync.origin)
-- Per-column versions (sync.enable_column_versions): the BEFORE trigger computes the mask
-- of the data columns whose value changed (old IS DISTINCT FROM new) in one expression and
-- stamps those columns with the write's version (a bigint: the time in microseconds since
-- 2000 shifted left 11 bits, or'ed with the origin number, as sync.version_of computes
-- it); the row's sync_changed mask goes into the journal entry. Each interpreted
-- statement costs about as much as the comparisons it makes, so the trigger runs as few
-- as it can: one for the mask, one to see whether the statement set a system or version
-- column itself (reset only then), one mask test per four stamps.
-- The AFTER statement triggers run as their owner (SECURITY DEFINER, fixed search_path):
-- application roles need no privilege on the sync schema. The BEFORE row trigger stays
-- SECURITY INVOKER (a per-row settings save and restore would cost more than it reads).
CREATE OR REPLACE FUNCTION sync.enable_plpgsql_capture(p_table text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    pkcol text := p_table || 'id';
    space integer := sync.key_lock_space(p_table);
    region_sql text := coalesce(quote_literal((SELECT region FROM sync.settings)),
                                'sync.local_region()');
    number_sql text := coalesce((SELECT o.number::text FROM sync.origin o
                                 JOIN sync.settings s ON s.region = o.region),
                                'sync.local_origin()');
    apply_member text := 'pg_has_role(current_user, ''regionsync_apply'', ''MEMBER'')';
    variant text; applying_sql text; journal_off_sql text;
    keep_sql text; mask_sql text; moved_sql text; stamp_sql text; forged_sql text;
    reset_sql text; local_sql text; before_sql text;
    ev text; timing text; refs text; level text; fn text; name text;
BEGIN
    PERFORM sync.enable_column_versions(p_table);
    -- per versioned column: its bit in the change mask (attnum - 1; attnums past 63 share
    -- bit 63, so those are compared again where they are stamped), written as a quoted
    -- literal (bit 63 is the negative end of bigint)
    WITH col AS (
        SELECT a.attname AS c, a.attname || '__v' AS v, a.attnum > 63 AS shared,
               quote_literal(1::bigint << least(a.attnum - 1, 63)) || '::bigint' AS bit,
               1::bigint << least(a.attnum - 1, 63) AS bitval,
               (row_number() OVER (ORDER BY a.attnum) - 1) / 4 AS grp
        FROM pg_attribute a
        WHERE a.attrelid = format('public.%I', p_table)::regclass AND a.attnum > 0
          AND NOT a.attisdropped
          AND EXISTS (SELECT 1 FROM pg_attribute v WHERE v.attrelid = a.attrelid
                      AND v.attname = a.attname || '__v' AND NOT v.attisdropped)),
    stamp AS (
        -- the stamps, four columns to a test of the mask: a statement that changed one
        -- column of ten runs four tests, not ten
        SELECT grp, count(*) AS n, quote_literal(bit_or(bitval)) || '::bigint' AS bits,
               string_agg(format(CASE WHEN shared
                                      THEN 'IF NEW.%1$I IS DISTINCT FROM OLD.%1$I THEN '
                                      ELSE 'IF (mask & %3$s) <> 0 THEN ' END
                                 || 'NEW.%2$I := ver; END IF;', c, v, bit), ' ') AS body
        FROM col GROUP BY grp)
    SELECT (SELECT coalesce(string_agg(format('NEW.%1$I := OLD.%1$I;', v), ' '), '') FROM col),
           (SELECT coalesce(string_agg(format('CASE WHEN NEW.%1$I IS DISTINCT FROM OLD.%1$I '
                                              'THEN %2$s ELSE 0 END', c, bit), ' | '),
                            '0::bigint') FROM col),
           (SELECT format('ROW(NEW.createdon, NEW.sync_base%1$s) IS DISTINCT FROM '
                          'ROW(OLD.createdon, OLD.sync_base%2$s)',
                          string_agg(format(', NEW.%I', v), ''),
                          string_agg(format(', OLD.%I', v), '')) FROM col),
           (SELECT coalesce(string_agg(CASE WHEN n = 1 THEN body
                                            ELSE format('IF (mask & %s) <> 0 THEN %s END IF;',
                                                        bits, body) END,
                                       E'\n            ' ORDER BY grp), '') FROM stamp),
           (SELECT coalesce(string_agg(format(' OR n.%I IS NOT NULL', v), ''), '') FROM col),
           (SELECT coalesce(string_agg(format(', %I = NULL', v), ''), '') FROM col)
      INTO keep_sql, mask_sql, moved_sql, stamp_sql, forged_sql, reset_sql;

    -- A local write. The mask of the versioned columns whose value changed is computed in
    -- one expression; the system and version columns are the trigger's, whatever the
    -- statement set: reset to the old row's, then stamped. Resetting them costs an
    -- assignment per column, so it is done only when the statement set one of them (or
    -- when no versioned column changed and the whole row decides whether anything did).
    local_sql := format($local$
            IF mask = 0 THEN
                NEW.versionnumber := OLD.versionnumber;
                NEW.sync_changed := OLD.sync_changed;
                NEW.modifiedon := OLD.modifiedon;
                NEW.sync_origin := OLD.sync_origin;
                NEW.createdon := OLD.createdon;
                NEW.sync_base := OLD.sync_base;
                %1$s
                IF NEW IS NOT DISTINCT FROM OLD THEN
                    RETURN NEW;  -- no-op update: same version, no journal entry
                END IF;
            ELSIF %2$s THEN
                NEW.createdon := OLD.createdon;
                NEW.sync_base := OLD.sync_base;
                %1$s
            END IF;
            NEW.versionnumber := nextval('public.regionsync_versionnumber_seq');
            -- never older than the version it replaces, whatever the clocks say
            NEW.modifiedon := greatest(clock_timestamp(), OLD.modifiedon + interval '1 microsecond');
            NEW.sync_origin := %3$s;
            ver := (((extract(epoch FROM NEW.modifiedon) * 1000000)::bigint
                     - 946684800000000) << 11) | %4$s;
            %5$s
            NEW.sync_changed := mask;
            RETURN NEW;$local$, keep_sql, moved_sql, region_sql, number_sql, stamp_sql);

    FOR variant, applying_sql, journal_off_sql IN VALUES
        ('', $$nullif(current_setting('regionsync.origin', true), '')$$,
         $$current_setting('regionsync.journal', true) = 'off'$$),
        ('local_', 'NULL::text', 'false')
    LOOP

    IF variant = '' THEN
        -- apply, the owner, superusers: a write with regionsync.origin set is a peer's,
        -- whose versions and times the applier set; anything else is a local write
        before_sql := format($apply$
            IF %1$s IS NULL THEN%2$s
            END IF;
            IF mask = 0 THEN
                NEW.versionnumber := OLD.versionnumber;
                NEW.sync_changed := OLD.sync_changed;
                IF NEW IS NOT DISTINCT FROM OLD THEN
                    RETURN NEW;
                END IF;
            END IF;
            NEW.versionnumber := nextval('public.regionsync_versionnumber_seq');
            NEW.sync_changed := mask;
            RETURN NEW;$apply$, applying_sql, local_sql);
    ELSE
        before_sql := local_sql;
    END IF;
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            ver bigint;
            mask bigint := %2$s;
        BEGIN%3$s
        END $body$ $fn$, 'capture_before_' || variant || p_table, mask_sql, before_sql);
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
        DECLARE
            applying text := %6$s;
            here text;
            stamped text;
        BEGIN
            -- an apply that forwards nothing (mesh member, spoke) journals nothing
            IF %7$s THEN
                RETURN NULL;
            END IF;
            IF TG_OP = 'INSERT' AND applying IS NULL THEN
                here := %5$s;
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
                -- The stamping UPDATE runs as this function's owner (a regionsync_apply
                -- member), so the settings below skip its own triggers.
                IF EXISTS (SELECT 1 FROM new_rows n
                           WHERE n.sync_origin IS DISTINCT FROM here
                              OR n.sync_base IS DISTINCT FROM sync.version_of(n.modifiedon, %12$s)
                              OR n.sync_changed IS NOT NULL%10$s
                              OR n.modifiedon < statement_timestamp()
                              OR n.modifiedon > clock_timestamp()
                              OR n.versionnumber > (SELECT last_value
                                                    FROM public.regionsync_versionnumber_seq))
                   OR EXISTS (SELECT 1 FROM new_rows n JOIN sync.tombstone tb
                                ON tb.tablename = (TG_TABLE_NAME::text COLLATE "default") AND tb.pk = n.%2$I
                              WHERE (tb.modifiedon, tb.origin) >= (n.modifiedon, here)) THEN
                    stamped := current_setting('regionsync.stamped', true);
                    PERFORM set_config('regionsync.stamped', 'on', true),
                            set_config('regionsync.journal', 'off', true);
                    UPDATE public.%3$I t
                    SET sync_origin = here,
                        modifiedon = s.stamp,
                        sync_base = sync.version_of(s.stamp, %12$s),
                        sync_changed = NULL%11$s,
                        versionnumber = nextval('public.regionsync_versionnumber_seq')
                    FROM (SELECT n.%2$I AS pk,
                                 greatest(clock_timestamp(),
                                          (SELECT tb.modifiedon + interval '1 microsecond'
                                           FROM sync.tombstone tb
                                           WHERE tb.tablename = (TG_TABLE_NAME::text COLLATE "default")
                                             AND tb.pk = n.%2$I)) AS stamp
                          FROM new_rows n) s
                    WHERE t.%2$I = s.pk;
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
                -- an applied change is journaled as the peer's (a forwarding hub): a row's
                -- newest version may be another region's, whose own entry forwards that
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                SELECT TG_TABLE_NAME, 'i', coalesce(applying, n.sync_origin), array_agg(n.%2$I),
                       array_agg(n.versionnumber)
                FROM new_rows n GROUP BY coalesce(applying, n.sync_origin);
            ELSIF TG_OP = 'UPDATE' THEN
                -- changed rows have versions newer than every old version of the statement
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions, cols)
                SELECT TG_TABLE_NAME, 'u', coalesce(applying, n.sync_origin), array_agg(n.%2$I),
                       array_agg(n.versionnumber), n.sync_changed
                FROM new_rows n
                WHERE (n.%2$I, n.versionnumber) NOT IN (SELECT o.%2$I, o.versionnumber
                                                       FROM old_rows o)
                GROUP BY coalesce(applying, n.sync_origin), n.sync_changed;
            ELSIF applying IS NULL THEN
                -- local delete: tombstones newer than the row they end (whatever the
                -- clocks say), then the journal
                WITH tomb AS (
                    INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin)
                    SELECT TG_TABLE_NAME, o.%2$I,
                           greatest(clock_timestamp(), o.modifiedon + interval '1 microsecond'),
                           %5$s
                    FROM old_rows o
                    ON CONFLICT (tablename, pk) DO UPDATE
                        SET modifiedon = greatest(EXCLUDED.modifiedon,
                                                  tb.modifiedon + interval '1 microsecond'),
                            origin = EXCLUDED.origin
                    RETURNING tb.pk, tb.origin)
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                SELECT TG_TABLE_NAME, 'd', origin, array_agg(pk),
                       array_agg(nextval('public.regionsync_versionnumber_seq'))
                FROM tomb GROUP BY origin;
            ELSE
                -- apply (or retract): the deletion's origin was recorded by the caller in
                -- sync.tombstone; without one, the applying origin
                INSERT INTO sync.change_set (tablename, op, origin, pks, versions)
                SELECT TG_TABLE_NAME, 'd', d.origin, array_agg(d.pk),
                       array_agg(nextval('public.regionsync_versionnumber_seq'))
                FROM (SELECT o.%2$I AS pk, coalesce(tb.origin, applying) AS origin
                      FROM old_rows o
                      LEFT JOIN sync.tombstone tb
                             ON tb.tablename = (TG_TABLE_NAME::text COLLATE "default") AND tb.pk = o.%2$I) d
                GROUP BY d.origin;
            END IF;
            RETURN NULL;
        END $body$ $fn$, 'capture_after_' || variant || p_table, pkcol, p_table, space, region_sql,
               applying_sql, journal_off_sql, NULL, NULL, forged_sql, reset_sql, number_sql);
    END LOOP;

    FOR ev, timing, refs, level IN VALUES
        ('update', 'BEFORE', '', 'ROW'),
        ('insert', 'AFTER', 'REFERENCING NEW TABLE AS new_rows', 'STATEMENT'),
        ('update', 'AFTER', 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows',
         'STATEMENT'),
        ('delete', 'AFTER', 'REFERENCING OLD TABLE AS old_rows', 'STATEMENT')
    LOOP
        fn := CASE timing WHEN 'BEFORE' THEN 'capture_before_' ELSE 'capture_after_' END;
        name := CASE timing WHEN 'BEFORE' THEN 'regionsync_capture_before'
                             ELSE 'regionsync_capture_' || ev END;
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON public.%I', name, p_table);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON public.%I', name || '_local', p_table);
        -- apply, the owner and superusers: the settings-aware variant (the stamping UPDATE
        -- of a local insert sets regionsync.stamped and skips the BEFORE trigger)
        EXECUTE format('CREATE TRIGGER %I %s %s ON public.%I %s FOR EACH %s WHEN (%s) '
                       'EXECUTE FUNCTION sync.%I()', name, timing, upper(ev), p_table, refs,
                       level,
                       CASE WHEN timing = 'BEFORE'
                            THEN 'current_setting(''regionsync.stamped'', true) IS DISTINCT '
                                 'FROM ''on'' AND ' || apply_member
                            ELSE apply_member END,
                       fn || p_table);
        -- everyone else: the variant that reads no setting
        EXECUTE format('CREATE TRIGGER %I %s %s ON public.%I %s FOR EACH %s WHEN (NOT %s) '
                       'EXECUTE FUNCTION sync.%I()', name || '_local', timing, upper(ev),
                       p_table, refs, level, apply_member, fn || 'local_' || p_table);
    END LOOP;

    -- inserts: system columns from defaults that need nothing of the sync schema
    EXECUTE format('ALTER TABLE public.%I '
                   'ALTER COLUMN versionnumber SET DEFAULT '
                   'nextval(''public.regionsync_versionnumber_seq''), '
                   'ALTER COLUMN modifiedon SET DEFAULT statement_timestamp(), '
                   'ALTER COLUMN sync_origin SET DEFAULT %s', p_table, region_sql);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_refuse_truncate ON public.%I', p_table);
    EXECUTE format('CREATE TRIGGER regionsync_refuse_truncate BEFORE TRUNCATE ON public.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION sync.refuse_truncate()', p_table);
    INSERT INTO sync.tracked_table (tablename, pk_column) VALUES (p_table, pkcol)
    ON CONFLICT (tablename) DO NOTHING;
END $function$;
REVOKE ALL ON FUNCTION sync.enable_plpgsql_capture(text) FROM PUBLIC;
