CREATE OR REPLACE FUNCTION sync.enable_c_capture(p_table text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    pkcol text := p_table || 'id';
    space integer := sync.key_lock_space(p_table);
    here text := coalesce((SELECT s.region FROM sync.settings s), '');
    -- the region's origin number ('' before it has one: the trigger asks sync.local_origin())
    num text := coalesce((SELECT o.number::text FROM sync.origin o
                          JOIN sync.settings s ON s.region = o.region), '');
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
                   'FOR EACH ROW EXECUTE FUNCTION sync.capture_before_update(%L, %L)',
                   p_table, here, num);
    EXECUTE format('CREATE TRIGGER regionsync_capture_insert AFTER INSERT ON public.%I '
                   'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.capture_after(%L, %L, %L, %L)',
                   p_table, here, pkcol, space, num);
    EXECUTE format('CREATE TRIGGER regionsync_capture_update AFTER UPDATE ON public.%I '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.capture_after(%L, %L, %L, %L)',
                   p_table, here, pkcol, space, num);
    EXECUTE format('CREATE TRIGGER regionsync_capture_delete AFTER DELETE ON public.%I '
                   'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION sync.capture_after(%L, %L, %L, %L)',
                   p_table, here, pkcol, space, num);
END $function$;
REVOKE ALL ON FUNCTION sync.enable_c_capture(text) FROM PUBLIC;
