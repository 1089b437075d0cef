CREATE OR REPLACE FUNCTION sync.protocol_versions(OUT min_version integer, OUT max_version integer, OUT release text, OUT region text)
 RETURNS record
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- The handshake a receiver makes before its first batch (sync/protocol.py): the wire
    -- protocol versions this database serves its destinations, the oldest and newest, the
    -- release that set them, and whose database this is. Executable by everyone: it is
    -- asked before anything else, whatever the caller's grants, and tells nothing else.
    SELECT 3, 4, '0.3.0.dev0', (SELECT s.region FROM sync.settings s)
$function$;
