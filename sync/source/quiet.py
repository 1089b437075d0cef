"""Polls with nothing to do (part of ``PeerLink``).

After a batch that found nothing, the link remembers what that batch saw: the peer's
snapshot, our token and our policy's sha (``Idle``). While all three stay the same, no
transaction with an id began or ended at the peer — so it has no new journal entry, grant,
pruning or erasure for us — and nothing of ours changed either: the poll ends after two
short queries instead of a batch's ~15.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

from sync.records import BatchResult

if TYPE_CHECKING:
    from sync.apply.applier import Applier
    from sync.link import PeerLink
    from sync.policy.model import Policy
    from sync.source.reader import SourceReader


class Idle(NamedTuple):
    snapshot: str          # the peer's snapshot when a batch found nothing
    token: str | None      # our token for the peer after that batch
    policy_sha: str


class QuietPolls:
    """The quiet-poll part of ``PeerLink`` (a mixin: it uses the link's reader, applier,
    metrics and ``_idle``, which ``run_once`` sets after an empty batch and clears before
    any other)."""

    def _quiet(self: PeerLink, reader: SourceReader, applier: Applier,
               policy: Policy) -> bool:
        """Whether this poll has nothing to do: the last batch found nothing, and since then
        the peer's snapshot is the same (no transaction with an id began or ended there, so
        no journal entry, grant, pruning or erasure either), as are our token (a `resync`
        clears it) and our policy.

        Two short queries instead of a batch's ~15: polling an idle peer every 20 ms cost
        0.34 of a core over both servers and the daemon, which a busy mesh of several
        links per region pays on every poll that finds nothing."""
        if self._idle is None:
            return False
        snapshot, token, sha = self._idle
        if token != snapshot and self._token_due():   # the empty batch's token, not yet
            return False                               # written: a full poll writes it
        return (policy.sha == sha and reader.snapshot() == snapshot
                and applier.read_token() == token)

    def _quiet_batch(self: PeerLink, started: float) -> BatchResult:
        assert self._idle is not None
        if self.health is not None:
            self.health.read(0.0, 0)
        batch = BatchResult(peer=self.peer, rows=0, token=self._idle.token or "", initial=False,
                            full=False, complete=True, lag_seconds=0.0, source_now=None,
                            applied={}, conflicts={}, dead_letters={}, filtered={},
                            retries=0)
        self._record(batch, time.monotonic() - started)
        return batch
