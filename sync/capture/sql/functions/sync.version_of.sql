-- A column version (migration 0021): the writer's hybrid-logical-clock time in
-- microseconds since 2000-01-01 UTC, shifted left 11 bits, or'ed with its origin number
-- (sync.origin). Integer order is the (time, origin) order, so one comparison merges a
-- column with the same tie-break in every region (sync/versions.py). The capture triggers
-- compute the same number inline (the C trigger from the TimestampTz itself).
CREATE OR REPLACE FUNCTION sync.version_of(p_time timestamp with time zone, p_number integer)
 RETURNS bigint
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT (((extract(epoch FROM p_time) * 1000000)::bigint - 946684800000000) << 11) | p_number
$function$;
