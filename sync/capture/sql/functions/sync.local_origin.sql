-- This database's origin number, for capture triggers made before the region was named
-- (they embed the number as a literal otherwise).
CREATE OR REPLACE FUNCTION sync.local_origin()
 RETURNS integer
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE n integer := nullif(current_setting('regionsync.origin_cache', true), '')::integer;
BEGIN
    IF n IS NULL THEN
        SELECT o.number INTO n FROM sync.origin o WHERE o.region = sync.local_region();
        IF n IS NULL THEN
            RAISE EXCEPTION 'regionsync: this database has no origin number; run `regionsync migrate --config region.yaml`';
        END IF;
        PERFORM set_config('regionsync.origin_cache', n::text, false);
    END IF;
    RETURN n;
END $function$;
