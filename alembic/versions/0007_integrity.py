"""Integrity: only regionsync's apply can write a foreign version (invariant 7).

0004-0006 let the capture triggers trust session settings (``regionsync.origin``,
``regionsync.stamped``, ``regionsync.journal``, ``regionsync.region_cache``) that any role
can set with ``set_config``. An application role could write a version attributed to
another region with a time of its choosing, make its writes look foreign (so they never
sync), skip the BEFORE trigger, or delete without a journal entry; and it needed INSERT on
``sync.change_set`` and ``sync.tombstone`` for the triggers to run, so it could also write
tombstones by hand. Now:

- **Who applies is a role, not a setting.** ``regionsync_apply`` (NOLOGIN) is granted to
  the daemon's login role (``regionsync roles`` prints the grant). Every capture trigger
  exists twice: the *apply* variant, chosen by ``WHEN (pg_has_role(current_user,
  'regionsync_apply', 'MEMBER'))``, honours the settings as before; the *local* variant,
  for everyone else, never reads them. A setting changes nothing for an application role.
- **Capture runs with its owner's rights** (the AFTER statement triggers are ``SECURITY
  DEFINER`` with a fixed search_path): application roles need no privilege on the
  ``sync`` schema, so they cannot touch the journal or the tombstones. Inserts take their
  system columns from defaults that need nothing of ``sync`` either: the region's name
  as a literal and ``public.regionsync_versionnumber_seq`` (moved out of ``sync``; using
  it only hands out version numbers).
- The BEFORE UPDATE trigger stays SECURITY INVOKER (a per-row function with a fixed
  search_path would cost a settings save and restore per row) and needs nothing of
  ``sync`` once the region's name is known (it is inlined; ``regionsync migrate``
  regenerates the triggers after recording it).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

APPLY = "pg_has_role(current_user, ''regionsync_apply'', ''MEMBER'')"

# The two variants of each trigger body differ only in what they read from settings.
VARIANTS = {
    "": {   # apply (and the owner, superusers, and our own nested statements)
        "@APPLYING@": "nullif(current_setting('regionsync.origin', true), '')",
        "@JOURNAL_OFF@": "current_setting('regionsync.journal', true) = 'off'",
        "@REGION@": "%5$s",
    },
    "local_": {   # every other role: settings are never read
        "@APPLYING@": "NULL::text",
        "@JOURNAL_OFF@": "false",
        "@REGION@": "%5$s",
    },
}

BEFORE = r"""
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            applying text := @APPLYING@;
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
            NEW.versionnumber := nextval('public.regionsync_versionnumber_seq');
            IF applying IS NULL THEN
                -- never older than the version it replaces, whatever the clocks say
                NEW.modifiedon := greatest(clock_timestamp(),
                                           OLD.modifiedon + interval '1 microsecond');
                NEW.sync_origin := @REGION@;
            END IF;
            RETURN NEW;
        END $body$ $fn$, 'capture_before_@V@' || p_table, pkcol, p_table, space, region_sql);
"""

AFTER = r"""
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
        DECLARE
            applying text := @APPLYING@;
            here text;
            stamped text;
        BEGIN
            -- an apply that forwards nothing (mesh member, spoke) journals nothing
            IF @JOURNAL_OFF@ THEN
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
                              OR n.modifiedon < statement_timestamp()
                              OR n.modifiedon > clock_timestamp()
                              OR n.versionnumber > (SELECT last_value
                                                    FROM public.regionsync_versionnumber_seq))
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
                        versionnumber = nextval('public.regionsync_versionnumber_seq')
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
                             ON tb.tablename = TG_TABLE_NAME AND tb.pk = o.%2$I) d
                GROUP BY d.origin;
            END IF;
            RETURN NULL;
        END $body$ $fn$, 'capture_after_@V@' || p_table, pkcol, p_table, space, region_sql);
"""


def _variants(template: str) -> str:
    out = []
    for suffix, subs in VARIANTS.items():
        text = template.replace("@V@", suffix)
        for token, value in subs.items():
            text = text.replace(token, value)
        out.append(text)
    return "".join(out)


TRIGGERS = r"""
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
        -- apply, the owner and superusers: the settings-aware variant
        EXECUTE format('CREATE TRIGGER %I %s %s ON public.%I %s FOR EACH %s WHEN (%s) '
                       'EXECUTE FUNCTION sync.%I()', name, timing, upper(ev), p_table, refs,
                       level,
                       CASE WHEN timing = 'BEFORE'
                            THEN 'current_setting(''regionsync.stamped'', true) IS DISTINCT '
                                 'FROM ''on'' AND @APPLY@'
                            ELSE '@APPLY@' END,
                       fn || p_table);
        -- everyone else: the variant that reads no setting
        EXECUTE format('CREATE TRIGGER %I %s %s ON public.%I %s FOR EACH %s WHEN (NOT %s) '
                       'EXECUTE FUNCTION sync.%I()', name || '_local', timing, upper(ev),
                       p_table, refs, level, '@APPLY@', fn || 'local_' || p_table);
    END LOOP;
""".replace("@APPLY@", APPLY)

UPGRADE = r"""
DO $$BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'regionsync_apply') THEN
        CREATE ROLE regionsync_apply NOLOGIN;
    END IF;
    -- the owner of the capture functions runs their nested statements: it must count as
    -- apply (a superuser already does)
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT regionsync_apply TO %I', current_user);
    END IF;
END$$;

ALTER SEQUENCE sync.versionnumber_seq SET SCHEMA public;
ALTER SEQUENCE public.versionnumber_seq RENAME TO regionsync_versionnumber_seq;
GRANT USAGE ON SEQUENCE public.regionsync_versionnumber_seq TO PUBLIC;
REVOKE ALL ON SCHEMA sync FROM PUBLIC;

CREATE OR REPLACE FUNCTION sync.enable_change_tracking(p_table text) RETURNS void
LANGUAGE plpgsql AS $enable$
DECLARE
    pkcol text := p_table || 'id';
    space integer := sync.key_lock_space(p_table);
    region_sql text := coalesce(quote_literal((SELECT region FROM sync.settings)),
                                'sync.local_region()');
    ev text; timing text; refs text; level text; fn text; name text;
BEGIN
""" + _variants(BEFORE) + _variants(AFTER) + TRIGGERS + r"""
    -- inserts: system columns from defaults that need nothing of the sync schema
    EXECUTE format('ALTER TABLE public.%I '
                   'ALTER COLUMN versionnumber SET DEFAULT '
                   'nextval(''public.regionsync_versionnumber_seq''), '
                   'ALTER COLUMN modifiedon SET DEFAULT clock_timestamp(), '
                   'ALTER COLUMN sync_origin SET DEFAULT %s', p_table, region_sql);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_refuse_truncate ON public.%I', p_table);
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
    raise NotImplementedError("0007 replaces the capture triggers; restore from a backup")


if __name__ == "__main__":   # print the generated SQL for review: python 0007_integrity.py
    print(UPGRADE)
