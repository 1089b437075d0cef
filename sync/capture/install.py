"""Which capture triggers a region's tables get: the C ones or the PL/pgSQL ones.

Both keep the same contract (``tests/integration/test_capture_paths.py`` runs it on
each): C where the server has the ``regionsync_capture`` extension, because the PL/pgSQL
row trigger is most of what capture costs the application's own writes.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, text

from sync.errors import ConfigError

log = logging.getLogger(__name__)

CAPTURE_KINDS = ("auto", "c", "plpgsql")


def use_capture(conn: Connection, capture: str) -> bool:
    """Create or drop the C capture extension as ``capture`` says; True if that changed.

    ``auto`` uses C when the server has the extension (``ext/regionsync_capture``, built
    with ``make install``) and PL/pgSQL otherwise; ``c`` refuses to go on without it;
    ``plpgsql`` re-attaches the PL/pgSQL triggers first, then drops the extension (the C
    triggers depend on it).
    """
    if capture not in CAPTURE_KINDS:
        raise ConfigError(f"capture must be one of {', '.join(CAPTURE_KINDS)}, not {capture!r}",
                          key="capture")
    installed = bool(conn.execute(text(
        "SELECT count(*) FROM pg_extension WHERE extname = 'regionsync_capture'")).scalar())
    owner = conn.execute(text("SELECT pg_has_role(nspowner, 'MEMBER') FROM pg_namespace "
                              "WHERE nspname = 'sync'")).scalar()
    if not owner:   # the daemon's own `migrate` checks the head; capture is the owner's
        return False
    available = bool(conn.execute(text(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'regionsync_capture'")
    ).scalar())
    if capture == "plpgsql":
        if installed:
            conn.execute(text("SELECT sync.enable_plpgsql_capture(tablename) "
                              "FROM sync.tracked_table"))
            conn.execute(text("DROP EXTENSION regionsync_capture"))
        return installed
    if installed:
        return False
    if not available:
        if capture == "c":
            raise ConfigError(
                "capture: c, but this PostgreSQL server has no regionsync_capture extension; "
                "build and install it (make -C ext/regionsync_capture install, as root on the "
                "database host) or set capture: auto", key="capture")
        log.info("the regionsync_capture extension is not installed on this server: "
                 "capture uses the PL/pgSQL triggers")
        return False
    conn.execute(text("CREATE EXTENSION regionsync_capture SCHEMA sync"))
    return True
