"""One root for every error regionsync raises.

Retriable versus fatal is a type, not a string match: the daemon retries
``TransientError`` with backoff and stops on anything else derived from ``SyncError``.
"""

from __future__ import annotations


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

    def __reduce__(self):  # keep the structured fields when pickled
        return (_rebuild_config_error, (self.detail, self.file, self.line, self.key))


def _rebuild_config_error(message: str, file: str | None, line: int | None,
                          key: str | None) -> ConfigError:
    return ConfigError(message, file=file, line=line, key=key)


class PolicyError(ConfigError):
    """A policy file is invalid or contradicts the live schema."""


class FilterSyntaxError(PolicyError):
    """A row filter could not be parsed; ``position`` is the 0-based character offset."""

    def __init__(self, message: str, *, text: str, position: int, **kw) -> None:
        self.text = text
        self.position = position
        pointer = f"\n    {text}\n    {' ' * position}^"
        super().__init__(f"{message} at position {position}{pointer}", **kw)


class SchemaError(SyncError):
    """The region database is not in the shape regionsync expects (not migrated?)."""


class TransientError(SyncError):
    """A failure worth retrying: a peer or the local database is unreachable."""

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        self.peer = peer
        super().__init__(f"peer {peer}: {message}" if peer else message)


class PostgresNotFound(SyncError):
    """initdb/pg_ctl could not be found for the embedded (demo/test) clusters."""
