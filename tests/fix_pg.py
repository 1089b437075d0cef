"""Real PostgreSQL for the test suite: one throwaway cluster per region.

The clusters start once per session on free loopback ports; each test gets fresh
databases cloned from a migrated template (fast), dropped afterwards. If PostgreSQL
cannot start, the whole run stops with one clear message — never a silent skip.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sync.db.catalog import Schema, introspect
from sync.db.connect import connect
from sync.db.migrate import migrate
from sync.errors import PeerFatal, SyncError
from sync.link import LinkSettings, PeerLink
from sync.policy import Policy, load_policy
from sync.records import BatchResult
from sync.testing.cluster import LocalCluster
from sync.testing.verify import synced_rows

REGIONS = ["eu-west", "eu-north", "us-east", "ap-south"]
TEMPLATE = "regionsync_template"
ROOT = Path(__file__).resolve().parent.parent
CAPTURE = os.environ.get("REGIONSYNC_TEST_CAPTURE", "auto")   # auto, c or plpgsql
POLICIES = ROOT / "policies" / "examples" / "shared-mesh"   # every region, same columns
_counter = itertools.count(1)
_LINK_PARTS = {"policy", "metrics", "stop", "clock"}   # PeerLink's own; the rest: settings


def new_link(**kw: Any) -> PeerLink:
    """A link from keyword arguments: ``LinkSettings`` fields and ``PeerLink``'s parts."""
    parts = {k: kw.pop(k) for k in list(kw) if k in _LINK_PARTS}
    return PeerLink(LinkSettings(**kw), **parts)


@pytest.fixture(scope="session")
def pg_clusters() -> Iterator[dict[str, LocalCluster]]:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    started: dict[str, LocalCluster] = {}
    try:
        for region in REGIONS:
            started[region] = LocalCluster(region, fast=True).start()
            url = started[region].create_database(TEMPLATE)
            migrate(url, region, CAPTURE)
    except (SyncError, OSError) as exc:
        for c in started.values():
            c.remove()
        pytest.exit(f"PostgreSQL could not be started for the test suite: {exc}", returncode=3)
    yield started
    for c in started.values():
        c.remove()


class Mesh:
    """Fresh region databases for one test, and the links between them."""

    def __init__(self, clusters: dict[str, LocalCluster], policy: Policy) -> None:
        self.clusters = clusters
        self.policy = policy
        self.dbname = f"t{next(_counter)}"
        self.urls = {r: c.create_database(self.dbname, template=TEMPLATE)
                     for r, c in clusters.items()}
        self._conns: dict[str, psycopg.Connection] = {}
        self.links: dict[tuple[str, str], PeerLink] = {}
        self.schema: Schema = introspect(self.conn("eu-west"))

    def conn(self, region: str) -> psycopg.Connection:
        if region not in self._conns or self._conns[region].closed:
            self._conns[region] = connect(self.urls[region], application_name="test")
        return self._conns[region]

    def new_conn(self, region: str) -> psycopg.Connection:
        return psycopg.connect(self.urls[region], autocommit=True)

    def link(self, target: str, source: str, **kw) -> PeerLink:
        key = (target, source)
        if key not in self.links:
            kw.setdefault("policy", lambda: self.policy)
            self.links[key] = new_link(region=target, peer=source,
                                       peer_conninfo=self.urls[source],
                                       local_conninfo=self.urls[target], **kw)
        return self.links[key]

    def pull(self, target: str, source: str) -> list[BatchResult]:
        """Run batches target <- source until one is not full."""
        out = [self.link(target, source).run_once()]
        while out[-1].full:
            out.append(self.link(target, source).run_once())
        return out

    def refusal(self, target: str, peer: str, url: str | None = None) -> str:
        """The one line a fresh link ``target <- peer`` (at ``url``, default the peer's)
        stops with; fails the test if its first batch does not stop it."""
        link = new_link(region=target, peer=peer, peer_conninfo=url or self.urls[peer],
                        local_conninfo=self.urls[target], policy=lambda: self.policy)
        try:
            with pytest.raises(PeerFatal) as err:
                link.run_once()
        finally:
            link.close()
        return str(err.value)

    def sync(self, regions: list[str] | None = None, max_rounds: int = 10) -> int:
        """Full mesh rounds until a round moves nothing; returns rows moved."""
        regions = regions or ["eu-west", "eu-north", "us-east"]
        moved = 0
        for _ in range(max_rounds):
            this_round = 0
            for target in regions:
                for source in regions:
                    if source != target:
                        this_round += sum(b.rows for b in self.pull(target, source))
            moved += this_round
            if this_round == 0:
                return moved
        raise AssertionError(f"mesh did not go quiet in {max_rounds} rounds")

    def rows(self, region: str, table: str, destination: str | None = None) -> list[tuple]:
        return synced_rows(self.conn(region), self.schema, self.policy, table,
                           destination or region)

    def one(self, region: str, query: str, params: tuple = ()) -> object:
        return self.conn(region).execute(query, params).fetchone()[0]

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        for c in self._conns.values():
            c.close()
        for c in self.clusters.values():
            c.drop_database(self.dbname)


@pytest.fixture(scope="session")
def shipped_policy() -> Policy:
    return load_policy(POLICIES)


@pytest.fixture
def mesh(pg_clusters: dict[str, LocalCluster], shipped_policy: Policy) -> Iterator[Mesh]:
    m = Mesh(pg_clusters, shipped_policy)
    yield m
    m.close()
