-- The change tracking journal, one row per changed key. The capture triggers store it per
-- statement in sync.change_set (keys and versions as arrays): this view is for people.
CREATE OR REPLACE VIEW sync.change_log AS
SELECT u.versionnumber, c.tablename, u.pk, c.op, c.origin, c.txid, c.changed_at
FROM sync.change_set c CROSS JOIN LATERAL unnest(c.pks, c.versions) AS u(pk, versionnumber);
COMMENT ON VIEW sync.change_log IS
    'The change tracking journal, one row per changed key (stored per statement in sync.change_set)';
