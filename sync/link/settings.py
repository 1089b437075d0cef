"""What one link is: a peer, the local region, and how to move changes between them.

Built in one place from the region's config (`LinkSettings.from_config`), for the daemon
and every command that pulls from a peer (`regionsync resync`, `dlq retry`): a one-off
resync is throttled by the peer's rate limit and ordered by the table priorities exactly
as the daemon would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sync.config import RegionConfig
from sync.errors import ConfigError
from sync.records import Origins

Clock = Callable[[], float]        # seconds, monotonic: time.monotonic, or a test's own
monotonic: Clock = time.monotonic


@dataclass(frozen=True, kw_only=True)
class LinkSettings:
    region: str                    # the local region: the only database written
    peer: str                      # the region pulled from
    peer_conninfo: str             # as the role the peer made for us
    local_conninfo: str
    origins: Origins = "peer"      # peer: only what the peer authored (mesh); any: a hub
    page_size: int = 5000
    poll_interval: float = 1.0
    forward: bool = True           # journal applied rows (a hub must)
    apply_connections: int = 2
    max_rows_per_second: float | None = None
    resync_on_expiry: bool = True
    priorities: dict[str, int] = field(default_factory=dict)   # table -> within a batch

    @classmethod
    def from_config(cls, cfg: RegionConfig, peer: str) -> LinkSettings:
        found = next((p for p in cfg.peers if p.name == peer), None)
        if found is None:
            raise ConfigError(f"peer {peer!r} is not listed under peers", key="peers",
                              file=str(cfg.source_file) if cfg.source_file else None)
        return cls(region=cfg.region, peer=peer,
                   peer_conninfo=found.conninfo(where=f"peers[{peer}].url"),
                   local_conninfo=cfg.database.conninfo(where="database.url"),
                   origins=found.origins, page_size=cfg.page_size,
                   poll_interval=cfg.poll_interval, forward=cfg.forward,
                   apply_connections=cfg.apply_connections,
                   max_rows_per_second=found.max_rows_per_second,
                   resync_on_expiry=cfg.retention.resync_on_expiry,
                   priorities=dict(cfg.table_priorities))
