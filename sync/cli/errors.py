"""How every command fails: one line on stderr naming the cause, and a documented exit code.

| exit | meaning |
|---|---|
| 0 | done |
| 1 | a runtime failure: a database unreachable or refusing, a link failing, rows failing |
| 2 | bad usage or configuration: a config or policy file, an unknown table, peer, region or key |
| 3 | the demo or tests cannot find PostgreSQL's server binaries |
| 130 | interrupted (Ctrl-C) |

No traceback reaches a user; ``-v`` adds one below the line, for bug reports.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

import click
import psycopg

from sync.errors import ConfigError, PostgresNotFound, SchemaError, describe, from_db

log = logging.getLogger(__name__)


def explain(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for any exception a command lets out."""
    if isinstance(exc, psycopg.Error):
        exc = from_db(exc)
    if isinstance(exc, ConfigError):
        return 2, str(exc)   # a filter's syntax error adds a pointer line below
    if isinstance(exc, PostgresNotFound):
        return 3, str(exc)
    if isinstance(exc, SchemaError):
        return 1, str(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return 1, f"{exc.strerror or describe(exc)}{where}"
    if isinstance(exc, Exception) and type(exc).__module__.startswith("sync"):
        return 1, describe(exc)
    return 1, f"unexpected {type(exc).__name__}: {describe(exc)} (rerun with -v for details)"


def fail(exc: BaseException, code: int | None = None) -> NoReturn:
    """Print ``exc`` as one line and exit (with its documented code unless ``code``)."""
    default, line = explain(exc)
    click.echo(f"regionsync: {line}", err=True)
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        log.debug("traceback", exc_info=exc)
    sys.exit(default if code is None else code)


class Commands(click.Group):
    """The top-level group: every command's uncaught error ends as ``fail()``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort,
                SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("regionsync: interrupted", err=True)
            sys.exit(130)
        except BaseException as exc:
            fail(exc)
