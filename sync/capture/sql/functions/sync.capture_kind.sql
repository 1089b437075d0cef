CREATE OR REPLACE FUNCTION sync.capture_kind()
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'regionsync_capture')
                THEN 'c' ELSE 'plpgsql' END
$function$;
