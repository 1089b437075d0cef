CREATE OR REPLACE FUNCTION sync.egress_held(p_table text, p_keys uuid[] DEFAULT NULL::uuid[])
 RETURNS SETOF uuid
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT s.pk FROM sync.egress_sent s
    WHERE s.role_name = session_user AND s.tablename = p_table AND s.gone_at IS NULL
      AND (p_keys IS NULL OR s.pk = ANY(p_keys))
$function$;
REVOKE ALL ON FUNCTION sync.egress_held(text, uuid[]) FROM PUBLIC;
