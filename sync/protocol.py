"""The wire protocol between an owner's database and a receiver, and its negotiation.

The owner's SQL functions and views are the protocol: a receiver reads them directly,
as the role the owner made for it. Each release numbers what its receivers read and what
its databases serve; ``sync.protocol_versions()`` says the owner's range (migration
0020; a database without it serves protocol 1, the row-level versions of 0.1.0). The
receiver asks once per session, before its first batch, and uses the highest version
both speak. Ranges that do not overlap stop that link alone, in one line naming both
sides and which to upgrade — as pglogical and Spock negotiate a min/max protocol version.

Supported skew: a release's database serves its own protocol and the one before, and its
receiver speaks both, so adjacent releases interoperate while a mesh is upgraded one
region at a time — except where what the owner's tables hold changes, since a receiver
reads them directly: protocol 2 (per-column versions) and 3 (versions as numbers) each
stop the links between releases, one line each, until both ends are upgraded
(docs/operations.md, "Upgrading").

| protocol | release | what changed |
|---|---|---|
| 1 | 0.1.0 | row-level versions (``modifiedon``/``sync_origin`` decide a row) |
| 2 | 0.2.0 | per-column versions (``<column>__v``), alternate keys, protocol negotiation |
| 3 | 0.3.0 | versions are numbers (``bigint``, sync/versions.py); origin numbers checked |
| 4 | 0.3.0 | journal entries name the sent columns they changed: updates read narrow |
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from sync import __version__
from sync.errors import PeerFatal

SPEAKS = (3, 4)          # the protocol versions this release's receiver reads
NARROW_PROTOCOL = 4      # from it, the journal's change masks (a range of updates read narrow)
RELEASE = __version__


@dataclass(frozen=True)
class Served:
    """What an owner's database serves."""

    low: int
    high: int
    release: str
    region: str | None = None      # whose database it is (None before migration 0020)

    def describe(self) -> str:
        versions = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"protocol {versions} (regionsync {self.release})"


def served(conn: psycopg.Connection) -> Served:
    """Ask the owner (one round trip; a database before migration 0020 serves 1)."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT min_version, max_version, release, region "
                               "FROM sync.protocol_versions()").fetchone()
    except psycopg.errors.UndefinedFunction:
        return Served(1, 1, "0.1.0")
    assert row is not None
    return Served(int(row[0]), int(row[1]), str(row[2]), row[3])


def negotiate(owner: Served, *, peer: str, region: str,
              speaks: tuple[int, int] = SPEAKS) -> int:
    """The highest version both sides speak, or ``PeerFatal`` naming both and what to
    upgrade first: the older side. A peer's URL that reaches another region's database
    stops the link too (a copied config line would otherwise pull the wrong region)."""
    if owner.region is not None and owner.region != peer:
        raise PeerFatal(f"the URL for peer {peer} reaches region {owner.region}'s database; "
                        f"fix peers[{peer}].url", peer=peer)
    low, high = max(owner.low, speaks[0]), min(owner.high, speaks[1])
    if low <= high:
        return high
    ours = Served(*speaks, RELEASE)
    if owner.high < speaks[0]:
        todo = (f"upgrade {peer}'s database first (`regionsync migrate` there with "
                f"regionsync {RELEASE} or later), then its daemon")
    else:
        todo = (f"upgrade {region}'s regionsync (this daemon) to a release that speaks "
                f"protocol {owner.low}")
    raise PeerFatal(f"{peer} serves {owner.describe()} and {region} reads "
                    f"{ours.describe()}: {todo}", peer=peer)
