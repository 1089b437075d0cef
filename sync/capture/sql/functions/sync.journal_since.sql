CREATE OR REPLACE FUNCTION sync.journal_since(p_from text, p_to text, p_origin text, p_exclude boolean)
 RETURNS SETOF sync.change_set
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT c.* FROM sync.change_set c WHERE true'
        || CASE WHEN p_origin IS NULL THEN ''
                WHEN p_exclude THEN ' AND c.origin <> $3' ELSE ' AND c.origin = $3' END
        || CASE WHEN p_from IS NULL THEN '' ELSE
           ' AND c.txid >= pg_snapshot_xmin($1::pg_snapshot)'
           ' AND NOT pg_visible_in_snapshot(c.txid, $1::pg_snapshot)' END
        || CASE WHEN p_to IS NULL THEN '' ELSE
           ' AND pg_visible_in_snapshot(c.txid, $2::pg_snapshot)' END
    USING p_from, p_to, p_origin;
END $function$;
REVOKE ALL ON FUNCTION sync.journal_since(text, text, text, boolean) FROM PUBLIC;
