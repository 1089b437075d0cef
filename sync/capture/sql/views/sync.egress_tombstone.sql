-- Tombstones as a destination may read them: of granted tables only, and of a
-- row-filtered table only keys that were sent to it (no key of a filtered-out row leaks).
-- Roles that are not destination roles (apply, the owner) see every tombstone.
CREATE OR REPLACE VIEW sync.egress_tombstone WITH (security_barrier) AS
SELECT tb.tablename, tb.pk, tb.modifiedon, tb.origin
FROM sync.tombstone tb
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR EXISTS (SELECT 1 FROM sync.egress_table t
              WHERE t.role_name = current_user AND t.tablename = tb.tablename
                AND (t.row_filter IS NULL
                     OR EXISTS (SELECT 1 FROM sync.egress_sent s
                                WHERE s.role_name = current_user
                                  AND s.tablename = tb.tablename AND s.pk = tb.pk)));
