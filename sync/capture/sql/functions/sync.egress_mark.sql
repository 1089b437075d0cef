-- The owner's row filters as static SQL, one branch per destination and row-filtered
-- table: `sync.source.egress.mark_function` regenerates the body from the policy each time
-- the policy is enforced (`regionsync roles --apply`, a daemon with `egress: true`). This
-- file is its signature, options and privileges, with the body a region has before any
-- destination has a row filter.
CREATE OR REPLACE FUNCTION sync.egress_mark(p_role name, p_table text, p_from text, p_to text, p_origin text, p_exclude boolean)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
END $function$;
REVOKE ALL ON FUNCTION sync.egress_mark(name, text, text, text, text, boolean) FROM PUBLIC;
