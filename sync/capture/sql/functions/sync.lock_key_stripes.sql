CREATE OR REPLACE FUNCTION sync.lock_key_stripes(p_spaces integer[], p_stripes integer[], p_exclusive boolean[])
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_spaces), 0) LOOP
        IF p_exclusive[i] THEN
            PERFORM pg_advisory_xact_lock(p_spaces[i], p_stripes[i]);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(p_spaces[i], p_stripes[i]);
        END IF;
    END LOOP;
    RETURN coalesce(cardinality(p_spaces), 0);
END $function$;
