"""The connections one link holds, and what is built on them.

A link reads its peer on one connection (``source``) and applies on one or more local
ones (``target``, then one per extra apply lane). Both schemas are read when the session
opens, so a reconnect after a failure also re-reads what the peer sends in binary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

from sync.apply.applier import Applier
from sync.db import origins
from sync.db.catalog import Schema, introspect
from sync.db.connect import connect
from sync.errors import PeerFatal
from sync.link.settings import LinkSettings
from sync.protocol import NARROW_PROTOCOL, negotiate, served
from sync.records import Snapshot
from sync.source.reader import SourceReader
from sync.wire import binary_tables


@dataclass(frozen=True)
class Session:
    """One open session of a link: every member is usable while it is open."""

    source: psycopg.Connection
    target: psycopg.Connection
    schema: Schema                 # the local schema (what apply writes)
    reader: SourceReader
    applier: Applier               # the main lane, on ``target``
    lanes: list[Applier] = field(default_factory=list)   # the applier, then one per extra
    lane_conns: list[psycopg.Connection] = field(default_factory=list)
    protocol: int = 0              # the wire protocol negotiated with the owner
    names: origins.Names = field(default_factory=dict)   # origin numbers both sides share

    @property
    def alive(self) -> bool:
        return not (self.source.closed or self.target.closed)


def check_versions(ours: Schema, theirs: Schema, *, peer: str, region: str) -> None:
    """Both ends merge per column (migration 0018) or the link does not start: rows
    without column versions cannot be merged column by column, and an owner before 0018
    would send the row's own time, which an edit of a column that never leaves moves."""
    for name, info in ours.tables.items():
        other = theirs.tables.get(name)
        if other is None or other.per_column == info.per_column:
            continue
        old, new = (peer, region) if info.per_column else (region, peer)
        raise PeerFatal(f"{old}'s database is at a schema before 0018 (row-level versions) "
                        f"and {new}'s has per-column versions; run `regionsync migrate` for "
                        f"{old} (upgrade every region's database, then its daemon)", peer=peer)


class LinkConnections:
    """Opens a `Session` on demand and closes it.

    Lifecycle: created closed; ``open()`` returns the open session (reconnecting if a
    connection was lost); ``close()`` drops every connection; also a context manager.
    Not thread-safe: one link, one job."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self._session: Session | None = None

    @property
    def session(self) -> Session | None:
        """The open session, if there is one (for status and tests: never opens)."""
        return self._session if self._session is not None and self._session.alive else None

    def open(self) -> Session:
        if self._session is not None and self._session.alive:
            return self._session
        self.close()
        s = self.settings
        target = connect(s.local_conninfo,
                         application_name=f"regionsync-{s.region}-apply-{s.peer}")
        try:
            source = connect(s.peer_conninfo, application_name=f"regionsync-{s.region}-poll")
        except BaseException:
            target.close()
            raise
        try:
            protocol = negotiate(served(source), peer=s.peer, region=s.region)
            names = origins.exchange(source, target, peer=s.peer, region=s.region)
            schema = introspect(target)
            theirs = introspect(source)
            check_versions(schema, theirs, peer=s.peer, region=s.region)
        except BaseException:
            source.close()
            target.close()
            raise
        reader = SourceReader(source, peer=s.peer, region=s.region, origins=s.origins,
                              binary=binary_tables(schema, theirs), names=names,
                              narrow=protocol >= NARROW_PROTOCOL)
        applier = Applier(target, schema, peer=s.peer, region=s.region, journal=s.forward,
                          origins=s.origins)
        self._session = Session(source, target, schema, reader, applier, [applier],
                                protocol=protocol, names=names)
        return self._session

    @contextlib.contextmanager
    def batch(self, session: Session, bound: str | None = None) -> Iterator[Snapshot]:
        """The reader's batch, for every read whose rows are applied: in its snapshot, the
        origin numbers the owner met since the handshake (a hub that heard from a new
        spoke) become ours before any of their versions is applied."""
        with session.reader.batch(bound) as snap:
            self.learn_origins(session)
            yield snap

    def learn_origins(self, session: Session) -> None:
        theirs = origins.load(session.source)
        if any(n not in session.names for n in theirs):
            # one dict, shared with the session's reader (its COPY names origins from it)
            session.names.update(origins.learn(session.target, theirs,
                                               peer=self.settings.peer,
                                               region=self.settings.region))

    def lanes(self) -> list[Applier]:
        """The appliers for parallel apply: the main one and one per extra local
        connection (``apply_connections``), opened on first use."""
        session = self.open()
        s = self.settings
        while len(session.lanes) < s.apply_connections:
            conn = connect(s.local_conninfo, application_name=(
                f"regionsync-{s.region}-apply-{s.peer}-{len(session.lanes) + 1}"))
            session.lane_conns.append(conn)
            session.lanes.append(Applier(conn, session.schema, peer=s.peer, region=s.region,
                                         journal=s.forward, origins=s.origins))
        return session.lanes

    def close(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        for conn in (session.source, session.target, *session.lane_conns):
            if not conn.closed:
                conn.close()

    def __enter__(self) -> LinkConnections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
