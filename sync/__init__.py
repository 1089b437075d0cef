"""regionsync: multi-region PostgreSQL synchronization with field-level residency policies.

The package is laid out along the data path: ``source`` (what a region offers its peers:
snapshot-bounded batches as COPY pages) → ``policy`` (what may cross which border) →
``apply`` (writing a peer's pages into the local region) → ``link`` (one pull → policy →
apply cycle for one peer), run by ``runtime`` (daemon, leader lock, HTTP, metrics) and
driven from ``cli``. ``db`` holds connections, the catalog, migrations and every
statement on regionsync's own tables; ``records`` and ``wire`` what crosses between
stages; ``errors`` the one error root; ``testing`` throwaway clusters for the demo and the
tests.
"""

__version__ = "0.3.0.dev0"
