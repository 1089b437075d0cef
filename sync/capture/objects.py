"""The server-side objects, one current file each, and how migrations apply them.

A migration that changes an object edits its file and names it with the file's digest
(``pinned``): ``apply`` runs a file only in the migration that pins its current text.
On a fresh database the older migrations that named an earlier text skip it, so each
object is created once, at the point of the history its text was written for (a view may
depend on a column a later migration adds). ``tests/integration/test_server_objects.py``
holds the two ends together: every file is pinned, at its current digest, by the last
migration that names it, and the database holds exactly what the files say.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import psycopg
from sqlalchemy import Connection

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent / "sql"

Kind = Literal["function", "view"]


@dataclass(frozen=True, slots=True)
class ServerObject:
    """One function or view (``name`` as ``schema.name``) and the file that defines it."""

    kind: Kind
    name: str
    relpath: str     # how migrations name it: ``functions/sync.journal_since.sql``
    path: Path

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def digest(self) -> str:
        return digest(self.text())


def digest(text: str) -> str:
    """The first 16 hex digits of the text's SHA-256: what a migration pins."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def all_objects() -> list[ServerObject]:
    """Every server-side object regionsync defines, functions first, by name."""
    found = []
    folders: tuple[tuple[Kind, str], ...] = (("function", "functions"), ("view", "views"))
    for kind, folder in folders:
        for path in sorted((SQL_DIR / folder).glob("*.sql")):
            found.append(ServerObject(kind, path.stem, f"{folder}/{path.name}", path))
    return found


def by_relpath() -> dict[str, ServerObject]:
    return {o.relpath: o for o in all_objects()}


def apply(conn: Connection, pinned: dict[str, str]) -> list[str]:
    """Run the files ``pinned`` names whose current digest is the pinned one, in order;
    return their names. A file whose text has moved on since is applied by the later
    migration that pins it."""
    objects = by_relpath()
    applied = []
    for relpath, pin in pinned.items():
        obj = objects.get(relpath)
        if obj is None:
            raise FileNotFoundError(f"server object {relpath} is not installed "
                                    f"(expected under {SQL_DIR})")
        text = obj.text()
        if digest(text) != pin:
            log.debug("%s: a later migration applies its current text", relpath)
            continue
        # psycopg runs a query without parameters as written (no %-placeholders): the
        # files hold format() templates
        raw = cast(psycopg.Connection, conn.connection.driver_connection)
        raw.execute(text.encode())
        applied.append(obj.name)
    return applied
