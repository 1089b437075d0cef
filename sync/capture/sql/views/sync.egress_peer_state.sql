-- A destination's own token at this region (how much of the destination it has applied),
-- for conflict detection; nothing about other peers.
CREATE OR REPLACE VIEW sync.egress_peer_state WITH (security_barrier) AS
SELECT p.peer, p.token
FROM sync.peer_state p
WHERE NOT EXISTS (SELECT 1 FROM sync.egress_role r WHERE r.role_name = current_user)
   OR p.peer = (SELECT r.region FROM sync.egress_role r WHERE r.role_name = current_user);
