"""How regionsync connects to a PostgreSQL database (its own region's or a peer's)."""

from __future__ import annotations

import psycopg

SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres"
# A peer that accepts TCP and then never answers (a frozen VM, a black-holed route) is
# noticed by the kernel within about a minute instead of the default two hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}


def connect(conninfo: str, *, application_name: str) -> psycopg.Connection:
    """A connection for regionsync: autocommit (transactions are explicit), no server-side
    prepared statements (a generic plan made while the journal was empty would scan the
    whole backlog on every poll), an unambiguous text format for COPY, a connect timeout
    and TCP keepalives."""
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None,
                           application_name=application_name, options=SESSION_OPTIONS,
                           connect_timeout=10, **KEEPALIVES)
