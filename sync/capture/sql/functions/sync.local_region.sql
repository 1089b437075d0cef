CREATE OR REPLACE FUNCTION sync.local_region()
 RETURNS text
 LANGUAGE plpgsql
 STABLE
AS $function$
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
END $function$;
