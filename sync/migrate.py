"""Bring a region database to the current schema (Alembic ``upgrade head``) and name its region.

Idempotent: running it again on a migrated database changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic.config import Config
from sqlalchemy import create_engine, text

from alembic import command

log = logging.getLogger(__name__)


def alembic_dir() -> Path:
    """The migrations: inside the installed wheel, or the repository's top-level ``alembic/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_alembic", here.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("regionsync's alembic migrations are not installed")


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def migrate(url: str, region: str) -> None:
    """Upgrade to head, then record this database's region name (used by the capture triggers)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with engine.begin() as conn:
            current = conn.execute(text("SELECT region FROM sync.settings")).scalar()
            if current is not None and current != region:
                raise ValueError(
                    f"this database belongs to region {current!r}, not {region!r}; refusing to "
                    "rename a region (its journal and peers' tokens refer to the old name)")
            conn.execute(text("INSERT INTO sync.settings (region) VALUES (:r) "
                              "ON CONFLICT (id) DO NOTHING"), {"r": region})
        log.info("region %s migrated to head", region)
    finally:
        engine.dispose()
