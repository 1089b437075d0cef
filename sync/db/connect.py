"""How regionsync connects to a PostgreSQL database (its own region's or a peer's)."""

from __future__ import annotations

from typing import Any

import psycopg

from sync.errors import SchemaError

# A session of ours never sits idle inside a transaction for long (between two tables of
# a batch at most); one that does was abandoned (a hung client), and the server ends it
# instead of holding its snapshot and locks. No statement_timeout: an initial load of a
# large table is one long COPY by design.
SESSION_OPTIONS = ("-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres "
                   "-c idle_in_transaction_session_timeout=300000")
# A peer that accepts TCP and then never answers (a frozen VM, a black-holed route) is
# noticed by the kernel within about a minute instead of the default two hours: by
# keepalives while we wait, and by tcp_user_timeout while what we sent goes unacknowledged.
# (A server whose processes are stopped but whose kernel runs still ACKs: the link waits,
# alone, until it answers.)
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3, "tcp_user_timeout": 60000}


def connect(conninfo: str, *, application_name: str) -> psycopg.Connection:
    """A connection for regionsync: autocommit (transactions are explicit), no server-side
    prepared statements (a generic plan made while the journal was empty would scan the
    whole backlog on every poll), an unambiguous text format for COPY, a connect timeout
    and TCP keepalives."""
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None,
                           application_name=application_name, options=SESSION_OPTIONS,
                           connect_timeout=10, **KEEPALIVES)


def one_row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate, a function call): its
    absence is a broken schema, not a value to carry on with."""
    row = cursor.fetchone()
    if row is None:
        raise SchemaError("a query that always returns a row returned none "
                          "(is this database migrated? run `regionsync migrate`)")
    return row


def scalar(cursor: psycopg.Cursor[Any]) -> Any:
    """The one value of a one-row, one-column query."""
    return one_row(cursor)[0]
