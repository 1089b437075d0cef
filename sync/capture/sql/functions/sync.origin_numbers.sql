-- The origin numbers this database knows (sync.origin): asked by a receiver at the
-- handshake, after sync.protocol_versions(), to check that both sides read every number
-- as the same region (sync/db/origins.py). Executable by everyone, like the protocol
-- handshake: region names and their numbers are what every peer's config holds anyway.
CREATE OR REPLACE FUNCTION sync.origin_numbers()
 RETURNS TABLE(number integer, region text)
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT o.number, o.region FROM sync.origin o ORDER BY o.number
$function$;
