"""Alembic environment: the URL comes from the caller, never from a module global.

``regionsync migrate`` passes an open connection in ``config.attributes["connection"]``;
by hand, pass ``-x url=postgresql://...``.
"""

from __future__ import annotations

from sqlalchemy import create_engine

from alembic import context

config = context.config


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database with: alembic -x url=postgresql://... upgrade head")
    engine = create_engine(_sqlalchemy_url(url))
    with engine.connect() as conn:
        context.configure(connection=conn, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
