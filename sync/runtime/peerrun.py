"""The daemon's record of one peer: one place for what five dictionaries used to hold."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sync.link import PeerLink
from sync.runtime.breaker import Breaker


@dataclass
class PeerRun:
    """The daemon's state for one peer: its link, breaker and back-off."""

    link: PeerLink
    breaker: Breaker
    failures: int = 0               # consecutive failed batches (back-off)
    not_before: float = 0.0         # monotonic: no poll before this
    stopped: str | None = None      # why the link stopped, while it is stopped
    retired: bool = False           # a reload removed it: no new page starts
    busy: threading.Lock = field(default_factory=threading.Lock)   # held by its poll
