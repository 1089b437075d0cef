CREATE OR REPLACE FUNCTION sync.record_egress(p_tables jsonb, p_token text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    r record;
BEGIN
    SELECT e.role_name, e.region, e.policy_sha INTO r
    FROM sync.egress_role e WHERE e.role_name = session_user;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'regionsync: % is not a destination role of this region', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO sync.egress_log (role_name, region, tables, columns_sha, policy_sha, token,
                                 columns)
    SELECT r.role_name, r.region,
           coalesce(jsonb_object_agg(t.tablename, (p_tables ->> t.tablename)::bigint)
                    FILTER (WHERE p_tables ? t.tablename), '{}'::jsonb),
           md5(coalesce(string_agg(t.tablename || ':' || array_to_string(t.columns, ','), ';'
                                   ORDER BY t.tablename), '')),
           r.policy_sha, p_token,
           coalesce(jsonb_object_agg(t.tablename, to_jsonb(t.columns))
                    FILTER (WHERE p_tables ? t.tablename), '{}'::jsonb)
    FROM sync.egress_table t WHERE t.role_name = r.role_name;
END $function$;
REVOKE ALL ON FUNCTION sync.record_egress(jsonb, text) FROM PUBLIC;
