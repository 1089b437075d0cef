"""One root for every error regionsync raises.

Retriable versus fatal is a type, not a string match. ``TransientError`` (a connection
lost or refused, a timeout, a deadlock, a serialization failure) is retried with backoff;
``PeerFatal`` stops one peer link with its reason on ``/status`` until the operator acts;
``ConfigError``/``SchemaError`` are fatal for the command or link that met them. psycopg's
errors are turned into these by ``from_db()`` where they leave the database layer, and the
message never carries a server error's DETAIL (it often quotes row values).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg


class SyncError(Exception):
    """Root of every regionsync error."""


class ConfigError(SyncError):
    """A configuration or policy file is invalid; the message names file, line and key."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.detail = message
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        if key:
            where += f"{key}: "
        super().__init__(f"{where}{message}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep the structured fields when pickled
        return (_rebuild_config_error, (self.detail, self.file, self.line, self.key))


def _rebuild_config_error(message: str, file: str | None, line: int | None,
                          key: str | None) -> ConfigError:
    return ConfigError(message, file=file, line=line, key=key)


class PolicyError(ConfigError):
    """A policy file is invalid or contradicts the live schema."""


class FilterSyntaxError(PolicyError):
    """A row filter could not be parsed; ``position`` is the 0-based character offset."""

    def __init__(self, message: str, *, text: str, position: int, **kw: Any) -> None:
        self.text = text
        self.position = position
        pointer = f"\n    {text}\n    {' ' * position}^"
        super().__init__(f"{message} at position {position}{pointer}", **kw)


class SchemaError(SyncError):
    """The region database is not in the shape regionsync expects (not migrated?)."""


class _LinkError(SyncError):
    """An error about one peer link (or the local database: ``peer`` None), with the
    server's SQLSTATE when there was one."""

    def __init__(self, message: str, *, peer: str | None = None,
                 sqlstate: str | None = None) -> None:
        self.peer = peer
        self.sqlstate = sqlstate
        self.detail = message
        super().__init__(f"peer {peer}: {message}" if peer else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.detail, self.peer, self.sqlstate))


class TransientError(_LinkError):
    """A failure worth retrying: a peer or the local database is unreachable, a lock wait
    timed out, a deadlock or serialization failure."""


class PeerFatal(_LinkError):
    """Retrying cannot help this peer link (no privilege, a table or column missing on one
    side, a token from another database): the link stops until the operator acts; the
    other links go on."""


class TokenRegression(PeerFatal):
    """The stored token is newer than the one we would write: another daemon is applying."""


class Throttled(_LinkError):
    """The owner caps what it serves us per minute (``serve.max_rows_per_minute``) and we
    reached it: not a failure — ask again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, peer: str | None = None,
                 retry_after: float = 1.0) -> None:
        super().__init__(message, peer=peer)
        self.retry_after = retry_after


class TokenExpired(PeerFatal):
    """The peer pruned its journal past our token (``retention.expire_after``) and
    ``resync_on_expiry`` is off: only a reload (`regionsync resync`) can continue."""


def _rebuild(cls: type, message: str, peer: str | None, sqlstate: str | None) -> SyncError:
    return cls(message, peer=peer, sqlstate=sqlstate)


# SQLSTATE classes and codes a retry can cure: connection exceptions (08), insufficient
# resources (53: disk full, out of memory, too many connections), operator intervention
# (57: admin shutdown, cancel, database starting), lock not available (55P03), deadlock
# and serialization failure (40001, 40P01), and I/O error (58030).
_TRANSIENT_CLASSES = ("08", "53", "57")
_TRANSIENT_CODES = {"40001", "40P01", "55P03", "58030", "57014"}


def describe(exc: BaseException) -> str:
    """One line for logs and ``/status``: the server's primary message (never its DETAIL,
    which quotes values) and SQLSTATE, or the exception's first line."""
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        primary = diag.message_primary if diag is not None else None
        text = primary or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if isinstance(exc, psycopg.errors.DataError):
            text = re.sub(r'"[^"]*"', '"…"', text)   # data errors quote the value
        return f"{text} ({exc.sqlstate})" if exc.sqlstate else text
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


def from_db(exc: psycopg.Error, *, peer: str | None = None, what: str = "") -> SyncError:
    """Classify a psycopg error where it leaves the database layer."""
    message = f"{what}: {describe(exc)}" if what else describe(exc)
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not state:
        return TransientError(message, peer=peer)     # no server answer: connection level
    if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES:
        return TransientError(message, peer=peer, sqlstate=state)
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction) \
            and "sync." in str(exc):
        return SchemaError(f"{message}; run `regionsync migrate --config region.yaml` first")
    return PeerFatal(message, peer=peer, sqlstate=state or None)


class PostgresNotFound(SyncError):
    """initdb/pg_ctl could not be found for the embedded (demo/test) clusters."""
