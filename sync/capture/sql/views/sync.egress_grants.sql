-- What the connected destination role may read (empty for any other role).
CREATE OR REPLACE VIEW sync.egress_grants AS
SELECT t.tablename, t.columns, t.row_filter, r.policy_sha
FROM sync.egress_table t JOIN sync.egress_role r USING (role_name)
WHERE t.role_name = current_user;
