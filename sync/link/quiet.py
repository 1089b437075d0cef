"""Polls with nothing to do, and when an empty batch still moves the token.

After a batch that found nothing, the link remembers what that batch saw: the peer's
snapshot, our token and our policy's sha (``Idle``). While all three stay the same, no
transaction with an id began or ended at the peer — so it has no new journal entry, grant,
pruning or erasure for us — and nothing of ours changed either: the poll ends after two
short queries instead of a batch's ~15 (polling an idle peer every 20 ms cost 0.34 of a
core over both servers and the daemon before).
"""

from __future__ import annotations

from typing import NamedTuple

from sync.link.connections import Session
from sync.link.settings import Clock, monotonic
from sync.policy.model import Policy

TOKEN_REFRESH = 60.0   # seconds between token writes for batches with nothing in them


class Idle(NamedTuple):
    snapshot: str          # the peer's snapshot when a batch found nothing
    token: str | None      # our token for the peer after that batch
    policy_sha: str


class QuietPolls:
    """The link's memory of its last empty batch, and of its last token write."""

    def __init__(self, clock: Clock = monotonic, refresh: float = TOKEN_REFRESH) -> None:
        self.clock = clock
        self.refresh = refresh
        self.idle: Idle | None = None
        self._token_written = clock() - refresh     # the first empty batch may write

    def token_due(self) -> bool:
        """Whether an empty batch should still move the token.

        In an idle mesh every token write takes a transaction id, which changes the
        snapshot the peer reads next, whose token write changes ours: two idle regions
        would write to each other forever (invariant 5). So a batch with nothing in it
        moves the token only every ``refresh`` seconds (to keep the range a poll scans
        short); in between, an idle poll writes nothing and takes no transaction id.
        """
        return self.clock() - self._token_written >= self.refresh

    def token_written(self) -> None:
        """A batch wrote our token (the refresh counts from any write)."""
        self._token_written = self.clock()

    def remember(self, idle: Idle) -> None:
        self.idle = idle

    def forget(self) -> None:
        """A new session, a batch with something in it: the next poll is a full one."""
        self.idle = None

    def quiet(self, session: Session, policy: Policy) -> bool:
        """Whether this poll has nothing to do: the last batch found nothing, and since then
        the peer's snapshot is the same, as are our token (a `resync` clears it) and our
        policy — and the empty batch's token, if not yet written, is not due."""
        if self.idle is None:
            return False
        snapshot, token, sha = self.idle
        if token != snapshot and self.token_due():   # a full poll writes that token
            return False
        return (policy.sha == sha and session.reader.snapshot() == snapshot
                and session.applier.read_token() == token)
