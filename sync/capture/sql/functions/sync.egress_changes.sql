CREATE OR REPLACE FUNCTION sync.egress_changes(p_from text, p_to text, p_origin text, p_exclude boolean)
 RETURNS TABLE(id bigint, tablename text, op character, origin text, txid xid8, changed_at timestamp with time zone, pks uuid[], cols bigint)
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    WITH me AS (SELECT r.role_name FROM sync.egress_role r WHERE r.role_name = session_user)
    SELECT q.* FROM (
        SELECT c.id, c.tablename, c.op, c.origin, c.txid, c.changed_at,
               CASE WHEN t.row_filter IS NULL THEN c.pks
                    ELSE ARRAY(SELECT k FROM unnest(c.pks) AS k
                               WHERE EXISTS (SELECT 1 FROM sync.egress_sent s
                                             WHERE s.role_name = t.role_name
                                               AND s.tablename = c.tablename AND s.pk = k))
               END AS pks,
               -- the columns the entry changed, as far as this destination is sent them
               -- (migration 0023): NULL, read as "any", where that is not known
               CASE WHEN NOT EXISTS (SELECT 1 FROM me) THEN c.cols
                    WHEN t.colmask IS NULL THEN NULL
                    ELSE c.cols & t.colmask END AS cols
        FROM sync.journal_since(p_from, p_to, p_origin, p_exclude) c
        LEFT JOIN sync.egress_table t ON t.role_name = session_user
                                     AND t.tablename = c.tablename
        WHERE NOT EXISTS (SELECT 1 FROM me)
           OR (t.tablename IS NOT NULL
               -- an update of columns this destination is not sent is no news to it
               AND (c.cols IS NULL OR t.colmask IS NULL OR (c.cols & t.colmask) <> 0))
        UNION ALL
        SELECT -w.id, w.tablename, 'u', w.origin, w.txid, w.changed_at, w.pks, NULL::bigint
        FROM sync.egress_withdrawal w
        WHERE w.role_name = session_user
          AND (p_origin IS NULL OR (w.origin = p_origin) <> p_exclude)
          AND (p_from IS NULL OR NOT pg_visible_in_snapshot(w.txid, p_from::pg_snapshot))
          AND (p_to IS NULL OR pg_visible_in_snapshot(w.txid, p_to::pg_snapshot))
    ) q
    WHERE cardinality(q.pks) > 0
$function$;
REVOKE ALL ON FUNCTION sync.egress_changes(text, text, text, boolean) FROM PUBLIC;
