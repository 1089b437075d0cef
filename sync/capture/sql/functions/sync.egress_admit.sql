CREATE OR REPLACE FUNCTION sync.egress_admit()
 RETURNS double precision
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT CASE WHEN r.max_rows_per_minute IS NULL OR s.served < r.max_rows_per_minute THEN 0
                ELSE greatest(0.1, 60 - extract(epoch FROM now() - s.oldest)) END
    FROM sync.egress_role r
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(t.n), 0) AS served, min(l.served_at) AS oldest
        FROM sync.egress_log l
        CROSS JOIN LATERAL (SELECT sum(v::bigint) AS n FROM jsonb_each_text(l.tables) AS e(k, v)) t
        WHERE l.role_name = r.role_name AND l.served_at > now() - interval '1 minute') s
    WHERE r.role_name = session_user
$function$;
REVOKE ALL ON FUNCTION sync.egress_admit() FROM PUBLIC;
