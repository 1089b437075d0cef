-- How far this region has pruned its journal: a destination whose token is older than
-- pruned_xid has expired and must reload.
CREATE OR REPLACE VIEW sync.egress_horizon AS
SELECT h.pruned_xid, h.pruned_at FROM sync.journal_horizon h;
