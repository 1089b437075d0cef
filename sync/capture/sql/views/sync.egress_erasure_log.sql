-- What this region erased at a destination's request: the requester reads its own
-- requests' outcome, nothing of anyone else's.
CREATE OR REPLACE VIEW sync.egress_erasure_log WITH (security_barrier) AS
SELECT l.requested_by, l.request_id, l.tablename, l.pk, l.region, l.erased_at, l.removed
FROM sync.erasure_log l
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR l.requested_by = (SELECT r.region FROM sync.egress_role r
                        WHERE r.role_name = current_user);
