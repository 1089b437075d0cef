-- The journal as a destination may read it: only entries of tables its role is granted,
-- and of a row-filtered table only keys it holds or may now receive (sync.egress_changes
-- does the filtering, as its owner; a destination role cannot read sync.change_set).
CREATE OR REPLACE VIEW sync.egress_change_set AS
SELECT e.id, e.tablename, e.op::char(1) AS op, e.origin, e.txid, e.changed_at, e.pks
FROM sync.egress_changes(NULL, NULL, NULL, false) e;
