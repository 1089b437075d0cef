"""What a link reads from its peer: its ingress policy, within what the owner grants."""

from __future__ import annotations

import logging

from sync.db.catalog import TableInfo
from sync.link.connections import Session
from sync.link.settings import LinkSettings
from sync.policy.ingress import Granted, link_rules
from sync.policy.model import Policy, TableRule

log = logging.getLogger(__name__)


class TablePlan:
    """The tables and rules of the link's next read.

    ``granted`` is what the peer's owner grants us (None: we connect as a role it did not
    make for us); ``refused`` the tables our policy asks for that it does not send
    (table -> why), logged once per change and shown on /status."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.granted: Granted | None = None
        self.refused: dict[str, str] = {}

    def refresh_grants(self, session: Session) -> None:
        """Ask the owner again: it may have changed what it sends us."""
        self.granted = session.reader.grants()

    def tables(self, policy: Policy, session: Session
               ) -> tuple[dict[str, TableRule], list[TableInfo]]:
        s = self.settings
        rules, notes = link_rules(policy, set(session.schema.tables), self.granted,
                                  peer=s.peer, region=s.region)
        for table, note in notes.items():
            if self.refused.get(table) != note:
                log.warning("peer %s: %s (ingress asks for more than egress grants)", s.peer,
                            note, extra={"peer": s.peer, "table": table})
        self.refused = notes
        order = session.schema.topo_order(list(rules), s.priorities)
        return rules, [session.schema.tables[t] for t in order]

    def record_egress(self, session: Session, read: dict[str, int], token: str) -> None:
        """Tell the owner what we read (its egress log) when we read as its role for us."""
        if self.granted is not None and any(read.values()):
            session.reader.record_egress(dict(read), token)
