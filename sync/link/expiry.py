"""A token the peer's retention overtook: the receiver's side of retention (the owner's
side is ``sync.runtime.retention``), and the reload that follows it or a `resync`."""

from __future__ import annotations

import logging
import time

from sync.db import state
from sync.errors import TokenExpired
from sync.link.connections import Session
from sync.link.settings import Clock, LinkSettings
from sync.policy.model import Policy
from sync.policy.retract import remove_missing
from sync.runtime.metrics import Metrics

log = logging.getLogger(__name__)


class TokenExpiry:
    """Whether the link is reloading (an initial load over copies already here), and
    when its token last expired (``expired_at``, wall-clock seconds, for /status)."""

    def __init__(self, settings: LinkSettings, metrics: Metrics | None,
                 wall_clock: Clock = time.time) -> None:
        self.settings = settings
        self.metrics = metrics
        self.wall_clock = wall_clock
        self.reloading = False
        self.expired_at: float | None = None

    def start_reload(self) -> None:
        """The next initial load replaces what we hold of the peer: afterwards, copies it
        no longer has are removed (`finish_reload`)."""
        self.reloading = True

    def expired(self, session: Session) -> None:
        """The peer pruned its journal past our token: what we missed is gone from it. With
        ``resync_on_expiry`` we load from it afresh, then remove the copies it no longer
        has; else the link stops until `regionsync resync`."""
        peer = self.settings.peer
        self.expired_at = self.wall_clock()
        if self.metrics is not None:
            self.metrics.token_expired.labels(peer, self.settings.region).inc()
        if not self.settings.resync_on_expiry:
            raise TokenExpired(f"token expired: {peer}'s journal no longer reaches back "
                               "to it; run `regionsync resync`", peer=peer)
        log.warning("peer %s: token expired (its journal was pruned past it); reloading",
                    peer, extra={"peer": peer})
        state.forget_peer(session.target, peer)
        self.start_reload()

    def finish_reload(self, session: Session, policy: Policy, tables: list[str]) -> None:
        """After a reload: copies from the peer that it no longer has (deleted while our
        token was expired, their tombstones pruned) go, as withdrawals — no resurrection."""
        s = self.settings
        remove_missing(session.target, session.source, session.schema, policy, s.region,
                       s.peer, tables)
        self.reloading = False
