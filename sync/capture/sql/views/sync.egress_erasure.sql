-- Erasure requests a destination must carry out: of granted tables, and of a row-filtered
-- table only keys that were sent to it.
CREATE OR REPLACE VIEW sync.egress_erasure WITH (security_barrier) AS
SELECT e.id, e.tablename, e.pk, e.txid
FROM sync.erasure e
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR EXISTS (SELECT 1 FROM sync.egress_table t
              WHERE t.role_name = current_user AND t.tablename = e.tablename
                AND (t.row_filter IS NULL
                     OR EXISTS (SELECT 1 FROM sync.egress_sent s
                                WHERE s.role_name = current_user
                                  AND s.tablename = e.tablename AND s.pk = e.pk)));
