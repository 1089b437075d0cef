-- Per-column versions for one tracked table (migration 0018), called by both capture
-- generators before they attach their triggers.
--
-- Every data column c gets a version column "c__v" (bigint: see sync.version_of), written by the BEFORE UPDATE trigger when c's value changes and by
-- apply when an incoming version of c wins. NULL means "the row's base version":
-- sync_base, the version of the insert that created the row, which also decides the row's
-- existence against a tombstone (a delete wins over every edit of the row it deleted; a
-- re-insert after it wins over the delete). sync_changed is the mask of the columns the
-- row's last write changed (bit attnum - 1, attnums past 63 share bit 63): the journal
-- entry carries it, so a destination never hears of a change to columns it is not sent.
-- The rows a table already holds get their current row version as their base. Version
-- columns of text (protocol 2, migration 0018) become numbers in place (sync.version_number:
-- the same time, the origin's number from sync.origin), one rewrite per table.
CREATE OR REPLACE FUNCTION sync.enable_column_versions(p_table text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    rel regclass := format('public.%I', p_table)::regclass;
    number_sql text := coalesce((SELECT o.number::text FROM sync.origin o
                                 JOIN sync.settings s ON s.region = o.region),
                                'sync.local_origin()');
    col text;
    retype text;
BEGIN
    FOR col IN SELECT a.attname FROM pg_attribute a
               WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                 AND a.attname NOT IN (p_table || 'id', 'versionnumber', 'modifiedon',
                                       'sync_origin', 'createdon', 'sync_base', 'sync_changed')
                 AND a.attname !~ '__v$'
               ORDER BY a.attnum LOOP
        IF length(col) > 60 THEN
            RAISE EXCEPTION 'regionsync: column %.% has a name longer than 60 characters; its version column would not fit',
                p_table, col USING ERRCODE = 'name_too_long';
        END IF;
        EXECUTE format('ALTER TABLE public.%I ADD COLUMN IF NOT EXISTS %I bigint',
                       p_table, col || '__v');
    END LOOP;
    SELECT string_agg(format('ALTER COLUMN %1$I DROP DEFAULT, ALTER COLUMN %1$I TYPE bigint '
                             'USING sync.version_number(%1$I)', a.attname), ', ')
      INTO retype
    FROM pg_attribute a
    WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
      AND a.atttypid = 'text'::regtype
      AND (a.attname ~ '__v$' OR a.attname = 'sync_base');
    IF retype IS NOT NULL THEN
        EXECUTE format('ALTER TABLE public.%I %s', p_table, retype);
    END IF;
    EXECUTE format('ALTER TABLE public.%I ADD COLUMN IF NOT EXISTS sync_changed bigint',
                   p_table);
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel
                   AND a.attname = 'sync_base' AND NOT a.attisdropped) THEN
        EXECUTE format('ALTER TABLE public.%I ADD COLUMN sync_base bigint', p_table);
        -- existing rows: their current row version is every column's version; no trigger
        -- runs (nothing changed that anyone should hear of)
        EXECUTE format('ALTER TABLE public.%I DISABLE TRIGGER USER', p_table);
        EXECUTE format('UPDATE public.%I SET sync_base = sync.version_number('
                       'sync.version_text(modifiedon, sync_origin))', p_table);
        EXECUTE format('ALTER TABLE public.%I ENABLE TRIGGER USER', p_table);
        EXECUTE format('ALTER TABLE public.%I ALTER COLUMN sync_base SET NOT NULL', p_table);
    END IF;
    -- a local insert's base is its own row version: the same statement time as modifiedon
    EXECUTE format('ALTER TABLE public.%I ALTER COLUMN sync_base SET DEFAULT '
                   'sync.version_of(statement_timestamp(), %s)', p_table, number_sql);
END $function$;
REVOKE ALL ON FUNCTION sync.enable_column_versions(text) FROM PUBLIC;
