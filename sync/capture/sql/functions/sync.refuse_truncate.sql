CREATE OR REPLACE FUNCTION sync.refuse_truncate()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    RAISE EXCEPTION 'regionsync: TRUNCATE of tracked table %.% is not captured and would make '
                    'this region diverge from its peers', TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'feature_not_supported',
              HINT = 'DELETE the rows instead (captured, with tombstones), or stop tracking '
                     'the table first.';
END $function$;
