"""A token the peer's retention overtook (part of ``PeerLink``): the receiver's side of
retention (the owner's side is ``sync.runtime.retention``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from sync.db import state
from sync.errors import TokenExpired
from sync.policy.retract import remove_missing

if TYPE_CHECKING:
    from sync.link import PeerLink

log = logging.getLogger(__name__)


class TokenExpiry:
    """The token-expiry part of ``PeerLink`` (a mixin: it uses the link's connections,
    policy and metrics, and its ``reloading`` flag)."""

    def _expired(self: PeerLink) -> None:
        """The peer pruned its journal past our token: what we missed is gone from it. With
        ``resync_on_expiry`` we load from it afresh, then remove the copies it no longer
        has (``_reload_done``); else the link stops until `regionsync resync`."""
        assert self.target is not None
        self.expired_at = time.time()
        if self.metrics is not None:
            self.metrics.token_expired.labels(self.peer, self.region).inc()
        if not self.resync_on_expiry:
            raise TokenExpired(f"token expired: {self.peer}'s journal no longer reaches back "
                               "to it; run `regionsync resync`", peer=self.peer)
        log.warning("peer %s: token expired (its journal was pruned past it); reloading",
                    self.peer, extra={"peer": self.peer})
        state.forget_peer(self.target, self.peer)
        self.reloading = True

    def _reload_done(self: PeerLink, tables: list) -> None:
        """After a reload: copies from the peer that it no longer has (deleted while our
        token was expired, their tombstones pruned) go, as withdrawals — no resurrection."""
        assert self.target is not None and self.source is not None and self.schema is not None
        remove_missing(self.target, self.source, self.schema, self._policy(), self.region,
                       self.peer, [t.name for t in tables])
        self.reloading = False
