-- Which region the connected destination role is for, under which policy.
CREATE OR REPLACE VIEW sync.egress_me AS
SELECT r.region, r.policy_sha FROM sync.egress_role r WHERE r.role_name = current_user;
