-- regionsync's capture triggers in C; `sync.enable_change_tracking` attaches them.
\echo Use "CREATE EXTENSION regionsync_capture SCHEMA sync" to load this file. \quit

CREATE FUNCTION capture_before_update() RETURNS trigger
AS 'MODULE_PATHNAME', 'capture_before_update' LANGUAGE C;

CREATE FUNCTION capture_after() RETURNS trigger
AS 'MODULE_PATHNAME', 'capture_after' LANGUAGE C;

-- only the role that installed the extension (regionsync's owner) attaches them
REVOKE ALL ON FUNCTION capture_before_update(), capture_after() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION capture_before_update(), capture_after() TO @extowner@;
