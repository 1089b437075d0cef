CREATE OR REPLACE FUNCTION sync.enable_change_tracking(p_table text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF sync.capture_kind() = 'c' THEN
        PERFORM sync.enable_c_capture(p_table);
    ELSE
        PERFORM sync.enable_plpgsql_capture(p_table);
    END IF;
END $function$;
REVOKE ALL ON FUNCTION sync.enable_change_tracking(text) FROM PUBLIC;
