CREATE OR REPLACE FUNCTION sync.key_lock_space(p_table text)
 RETURNS integer
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$ SELECT hashtext('regionsync.keys.' || p_table) $function$;
