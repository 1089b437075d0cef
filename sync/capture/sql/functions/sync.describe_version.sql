-- A version as people read it, and as protocol 2 wrote it: its UTC time, fixed width, then
-- its origin's name from sync.origin ('2026-12-02T19:09:55.123456Z eu-west'; '#<number>'
-- for a number this database has not met). For operators' queries and the tests.
CREATE OR REPLACE FUNCTION sync.describe_version(p_version bigint)
 RETURNS text
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT to_char((timestamptz '2000-01-01 00:00:00+00'
                    + (p_version >> 11) * interval '1 microsecond') AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
           || ' ' || coalesce((SELECT o.region FROM sync.origin o
                               WHERE o.number = (p_version & 2047)),
                              '#' || (p_version & 2047))
$function$;
