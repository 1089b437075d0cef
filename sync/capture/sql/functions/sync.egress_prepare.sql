CREATE OR REPLACE FUNCTION sync.egress_prepare(p_from text, p_origin text, p_exclude boolean)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    me    name := session_user;
    bound text := pg_current_snapshot()::text;   -- taken before this call writes anything
    t     record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = me) THEN
        RAISE EXCEPTION 'regionsync: % is not a destination role of this region', me
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_from IS NOT NULL THEN
        -- the destination has applied the batches that told it these keys are gone
        DELETE FROM sync.egress_sent s WHERE s.role_name = me AND s.gone_at IS NOT NULL
            AND pg_visible_in_snapshot(s.gone_at, p_from::pg_snapshot);
        DELETE FROM sync.egress_withdrawal w WHERE w.role_name = me
            AND pg_visible_in_snapshot(w.txid, p_from::pg_snapshot);
    END IF;
    FOR t IN SELECT e.tablename FROM sync.egress_table e
             WHERE e.role_name = me AND e.row_filter IS NOT NULL LOOP
        PERFORM sync.egress_mark(me, t.tablename, p_from, bound, p_origin, p_exclude);
    END LOOP;
    RETURN bound;
END $function$;
REVOKE ALL ON FUNCTION sync.egress_prepare(text, text, boolean) FROM PUBLIC;
