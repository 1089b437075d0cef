"""Which number stands for which region in column versions (``sync.origin``).

Versions name their writer by number (sync/versions.py), and a version written in one
region is merged in regions that never talk to it, so every database must read a number
as the same region. Each database keeps the numbers it has met: its own and those of
``origin_numbers`` (set by ``migrate``), and every peer's (learned at the handshake). A
database holds versions only of origins it has numbered, so checking two registries
against each other before the first batch is enough: a number that two regions claim, or
a region numbered twice, stops that link alone, naming both, before any version of the
two is mixed.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

from sync import versions
from sync.errors import ConfigError, PeerFatal

Names = dict[int, str]      # number -> region


def number_for(region: str, explicit: Mapping[str, int]) -> int:
    """A region's number: ``origin_numbers`` from the config, else the hash of its name."""
    return explicit.get(region, versions.default_number(region))


def load(conn: psycopg.Connection) -> Names:
    """This database's registry (an empty one before migration 0021)."""
    with conn.transaction():
        rows = conn.execute("SELECT number, region FROM sync.origin_numbers()").fetchall()
    return {int(n): str(r) for n, r in rows}


def conflict(ours: Mapping[int, str], theirs: Mapping[int, str]) -> str | None:
    """How two registries disagree (one number, two regions; one region, two numbers)."""
    by_name = {r: n for n, r in ours.items()}
    for n, r in sorted(theirs.items()):
        if n in ours and ours[n] != r:
            return f"number {n} is region {r} there and region {ours[n]} here"
        if r in by_name and by_name[r] != n:
            return f"region {r} is number {n} there and number {by_name[r]} here"
    return None


def register(conn: psycopg.Connection, names: Mapping[int, str]) -> None:
    """Add ``names`` (checked against the registry already) to this database's."""
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO sync.origin (number, region) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING", sorted(names.items()))


def ensure(conn: psycopg.Connection, region: str, explicit: Mapping[str, int]) -> None:
    """``migrate``: number this region and the regions ``origin_numbers`` names, refusing
    a config that contradicts what the database already numbered."""
    wanted = {n: r for r, n in explicit.items()}
    wanted.setdefault(number_for(region, explicit), region)
    problem = conflict(load(conn), wanted)
    if problem is not None:
        raise ConfigError(f"{problem} (this database's sync.origin); origin numbers cannot "
                          "change once versions carry them: set the database's number in "
                          "origin_numbers, or leave the region out to use it",
                          key="origin_numbers")
    register(conn, wanted)


def exchange(source: psycopg.Connection, target: psycopg.Connection, *, peer: str,
             region: str) -> Names:
    """The handshake: learn the owner's numbers, or stop the link when they contradict
    ours. Returns the registry both now share (ours, with the owner's added)."""
    return learn(target, load(source), peer=peer, region=region)


def learn(target: psycopg.Connection, theirs: Mapping[int, str], *, peer: str,
          region: str) -> Names:
    """Add the owner's numbers ``theirs`` to ours, or stop the link when they contradict
    them. Read ``theirs`` in the snapshot a batch reads its rows in: an owner numbers an
    origin before it holds any version of it, so every version read has its number."""
    ours = load(target)
    _agree(ours, theirs, peer=peer, region=region)
    if any(n not in ours for n in theirs):
        register(target, {n: r for n, r in theirs.items() if n not in ours})
        # another link may have numbered the same region meanwhile: what is stored decides
        ours = load(target)
        _agree(ours, theirs, peer=peer, region=region)
    return ours


def _agree(ours: Mapping[int, str], theirs: Mapping[int, str], *, peer: str,
           region: str) -> None:
    problem = conflict(ours, theirs)
    if problem is not None:
        raise PeerFatal(f"{peer} and {region} number origins differently: {problem}; give "
                        "every region of the mesh the same origin_numbers (docs/operations.md, "
                        "\"Origin numbers\")", peer=peer)


class Namer:
    """Names versions for the conflict log from a database's registry, read once and
    again only when a version names a number it has not met."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.names: Names = {}

    def _know(self, number: int) -> None:
        if number not in self.names:
            self.names = load(self.conn)

    def describe(self, version: int) -> str:
        self._know(version & versions.MAX_ORIGIN)
        return versions.describe(version, self.names)

    def origin(self, version: int) -> str:
        """The name of a version's origin (``#<number>`` if none is known)."""
        return self.describe(version)[28:]

    def number_of(self, region: str) -> int | None:
        for attempt in range(2):
            for number, name in self.names.items():
                if name == region:
                    return number
            if attempt == 0:
                self.names = load(self.conn)
        return None


__all__ = ["Namer", "Names", "conflict", "ensure", "exchange", "learn", "load", "number_for",
           "register"]
