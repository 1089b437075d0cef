-- A column version as text: the writer's hybrid-logical-clock time in UTC, fixed width,
-- then its origin ('2026-12-02T19:09:55.123456Z eu-west'). In collation "C" the text
-- order is the (time, origin) order, so one comparison merges a column and the same
-- tie-break holds in every region. The capture triggers inline the same expression.
CREATE OR REPLACE FUNCTION sync.version_text(p_time timestamp with time zone, p_origin text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT to_char(p_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || ' ' || p_origin
$function$;
