-- A version of protocol 2 ('2026-12-02T19:09:55.123456Z eu-west', sync.version_text) as
-- the number that replaces it (migration 0021): its time, and its origin's number from
-- sync.origin. An origin the registry lacks is refused, naming it: a version without a
-- number would merge as the oldest of all.
CREATE OR REPLACE FUNCTION sync.version_number(p_version text)
 RETURNS bigint
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    n integer;
BEGIN
    IF p_version IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT o.number INTO n FROM sync.origin o WHERE o.region = substr(p_version, 29);
    IF n IS NULL THEN
        RAISE EXCEPTION 'regionsync: no origin number for region %; name it in origin_numbers and migrate again',
            substr(p_version, 29) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN sync.version_of(left(p_version, 27)::timestamptz, n);
END $function$;
REVOKE ALL ON FUNCTION sync.version_number(text) FROM PUBLIC;
