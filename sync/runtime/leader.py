"""At most one active daemon per region: a PostgreSQL session advisory lock.

The lock lives as long as the session that took it, so a crashed leader releases it at
once and a standby (polling ``try_acquire``) takes over. The token guard in ``apply``
(a token never moves backwards) is the second line of defence.
"""

from __future__ import annotations

import contextlib
import logging

import psycopg

from sync.db.connect import scalar

log = logging.getLogger(__name__)

LOCK_CLASS, LOCK_ID = 0x7253, 0x1   # "rS": one lock per database, i.e. per region


class LeaderLock:
    def __init__(self, conninfo: str, region: str) -> None:
        self._conninfo = conninfo
        self.region = region
        self._conn: psycopg.Connection | None = None

    def try_acquire(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, autocommit=True,
                                             application_name=f"regionsync-{self.region}-leader")
            return bool(scalar(self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                           (LOCK_CLASS, LOCK_ID))))
        except psycopg.Error as exc:
            log.warning("region %s: cannot reach the local database for the leader lock: %s",
                        self.region, exc)
            self.release()
            return False

    def held(self) -> bool:
        """Whether our session (and so the lock) is still alive."""
        if self._conn is None or self._conn.closed:
            return False
        try:
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
