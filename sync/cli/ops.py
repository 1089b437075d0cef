"""Operator commands: status, dead letters, conflicts, resync. They read the databases
directly, so they work whether or not the daemon runs."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import psycopg
import psycopg.conninfo

from sync.db import dead_letters, state
from sync.errors import ConfigError

if TYPE_CHECKING:   # the command imports what it runs only when it runs (a fast --help)
    from rich.progress import Progress, Task

    from sync.config import RegionConfig
    from sync.link import PeerLink
    from sync.policy.model import Policy

log = logging.getLogger(__name__)

config_opt = click.option("--config", "config_path", type=click.Path(path_type=Path),
                          required=True, help="The region's YAML configuration.")


def open_local(cfg: RegionConfig) -> psycopg.Connection:
    """The region's own database, or one line naming it and why it cannot be reached."""
    from sync.db.connect import connect
    from sync.errors import from_db
    try:
        return connect(cfg.database.conninfo(where="database.url"),
                       application_name=f"regionsync-{cfg.region}-cli")
    except psycopg.Error as exc:
        raise from_db(exc, what=f"local database {cfg.database.safe_url()}") from exc


def _open(config_path: Path) -> tuple[RegionConfig, psycopg.Connection]:
    from sync.config import load_config
    cfg = load_config(config_path)
    return cfg, open_local(cfg)


def _peer_link(cfg: RegionConfig, name: str, policy: Policy) -> PeerLink:
    """A one-off link from peer ``name`` into this region, outside the daemon: built as the
    daemon builds it (the peer's rate limit and the table priorities apply to a resync)."""
    from sync.link import PeerLink
    return PeerLink.from_config(cfg, name, policy=lambda: policy)


def _table(rows: list[list[Any]], headers: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(*headers, box=None, pad_edge=False)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    Console(width=200).print(t)


@click.command()
@config_opt
@click.option("--json", "as_json", is_flag=True)
def status(config_path: Path, as_json: bool) -> None:
    """Per peer: token, lag, backlog, last success, dead letters, conflicts."""
    from sync.db.catalog import introspect
    from sync.db.connect import connect
    from sync.policy.loader import load_policy
    from sync.runtime.status import local_status, peer_backlog
    cfg, conn = _open(config_path)
    with conn:
        schema = introspect(conn)
        stored = local_status(conn)["peers"]
    policy = load_policy(cfg.policy_dir, schema)
    out: dict[str, Any] = {"region": cfg.region, "policy": policy.sha, "peers": {}}
    for peer in cfg.peers:
        record = dict(stored.get(peer.name, {}))
        try:
            with connect(peer.conninfo(where=f"peers[{peer.name}].url"),
                         application_name=f"regionsync-{cfg.region}-cli") as src:
                record.update(peer_backlog(src, peer=peer.name, region=cfg.region,
                                           origins=peer.origins, token=record.get("token"),
                                           policy=policy, schema=schema))
                record["reachable"] = True
        except psycopg.OperationalError as exc:
            record.update(reachable=False, error=str(exc).splitlines()[0])
        out["peers"][peer.name] = record
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"region {cfg.region} · policy {policy.sha}")
    _table([[name, "yes" if r.get("reachable") else "NO", r.get("lag_seconds"),
             r.get("backlog"), r.get("last_success"), r.get("changes_applied"),
             r.get("dead_letters", 0), r.get("conflicts", 0)]
            for name, r in out["peers"].items()],
           ["peer", "reachable", "lag s", "backlog", "last success", "applied",
            "dead letters", "conflicts"])


# What would heal a dead letter that retrying has not, by SQLSTATE (`dlq list`).
STUCK_ADVICE: dict[str | None, str] = {
    "23503": "its parent row never arrived: the peer's policy may not send the parent "
             "(check `regionsync policy explain` at the peer), or the parent was deleted; "
             "fix that, then `regionsync dlq retry ID`, or `regionsync dlq discard ID`",
    "23505": "another row here holds the same unique value and the collision cannot be "
             "resolved by marking (a key without a text column); change one of the two "
             "rows' keys, then `regionsync dlq retry ID`",
    "23514": "a CHECK constraint here refuses the row: make this region's constraint match "
             "its peers', then `regionsync dlq retry ID`",
    "23502": "a column NOT NULL here is not sent by the peer: send it (policy) or relax the "
             "constraint, then `regionsync dlq retry ID`",
    None: "the same error on every attempt: `regionsync dlq show ID` for the error, fix "
          "the cause, then `regionsync dlq retry ID` (or `regionsync dlq discard ID`)",
}


@click.group()
def dlq() -> None:
    """The dead-letter table: rows that could not be applied."""


@dlq.command("list")
@config_opt
@click.option("--peer", default=None)
@click.option("--table", "table", default=None)
def dlq_list(config_path: Path, peer: str | None, table: str | None) -> None:
    _, conn = _open(config_path)
    with conn:
        rows = dead_letters.list_dead_letters(conn, peer, table)
    if not rows:
        click.echo("no dead letters")
        return
    _table([[*r[:10], "STUCK" if r[10] else ""] for r in rows],
           ["id", "peer", "table", "key", "op", "sqlstate", "retryable", "attempts",
            "last failed", "error", "stuck"])
    stuck = sorted({r[5] for r in rows if r[10]}, key=str)
    for sqlstate in stuck:
        click.echo(f"stuck ({sqlstate}): {STUCK_ADVICE.get(sqlstate, STUCK_ADVICE[None])}")


@dlq.command("show")
@config_opt
@click.argument("ident", type=int)
def dlq_show(config_path: Path, ident: int) -> None:
    _, conn = _open(config_path)
    with conn:
        row = dead_letters.get_dead_letter(conn, ident)
    if row is None:
        raise ConfigError(f"no dead letter {ident} (see `regionsync dlq list`)")
    click.echo(json.dumps(row, indent=2, default=str))


def _ids(conn: psycopg.Connection, idents: tuple[int, ...], all_: bool) -> list[int]:
    if not idents and not all_:
        raise ConfigError("name dead-letter ids, or pass --all")
    if all_:
        return dead_letters.dead_letter_ids(conn)
    return list(idents)


def _dead_letter_args(command: Callable[..., Any]) -> Callable[..., Any]:
    """--config, dead-letter ids, --all: what retry and discard take."""
    command = click.option("--all", "all_", is_flag=True, help="Every dead letter.")(command)
    command = click.argument("idents", type=int, nargs=-1)(command)
    return config_opt(command)


@dlq.command("retry")
@_dead_letter_args
def dlq_retry(config_path: Path, idents: tuple[int, ...], all_: bool) -> None:
    """Re-read the rows from their peers and apply them again, now."""
    from sync.db.catalog import introspect
    from sync.policy.loader import load_policy
    cfg, conn = _open(config_path)
    with conn:
        ids = _ids(conn, idents, all_)
        peers = dead_letters.dead_letter_peers(conn, ids)
        policy = load_policy(cfg.policy_dir, introspect(conn))
    by_name = {p.name: p for p in cfg.peers}
    tried = resolved = 0
    for name in peers:
        if name not in by_name:
            click.echo(f"peer {name} is not in the config; its rows stay", err=True)
            continue
        link = _peer_link(cfg, name, policy)
        try:
            t, r = link.retry_dead_letters(ids=ids)
        finally:
            link.close()
        tried, resolved = tried + t, resolved + r
    click.echo(f"retried {tried}, resolved {resolved}, still failing {tried - resolved}")
    sys.exit(0 if tried == resolved else 1)


@dlq.command("discard")
@_dead_letter_args
def dlq_discard(config_path: Path, idents: tuple[int, ...], all_: bool) -> None:
    """Delete dead letters (the rows stay unapplied here)."""
    _, conn = _open(config_path)
    with conn:
        ids = _ids(conn, idents, all_)
        n = dead_letters.discard_dead_letters(conn, ids)
    log.info("discarded %d dead letter(s)", n, extra={"discarded": n})
    click.echo(f"discarded {n} dead letter(s)")


@click.group()
def conflicts() -> None:
    """The conflict log: versions that lost last-writer-wins, and copies that lost an
    alternate key (kept under a marked key)."""


@conflicts.command("list")
@config_opt
@click.option("--table", "table", default=None)
@click.option("--limit", default=50, show_default=True)
def conflicts_list(config_path: Path, table: str | None, limit: int) -> None:
    _, conn = _open(config_path)
    with conn:
        rows = state.list_conflicts(conn, table, limit)
    if not rows:
        click.echo("no conflicts")
        return
    _table([list(r) for r in rows], ["id", "logged", "table", "key", "via", "lost", "lost at",
                                     "won", "won at", "fields", "decided by"])


def _progress_bar(peer: str) -> Progress:
    """A rich progress bar on stderr: rows done of total, rows/s, ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed or 0:,.0f} rows/s")
    return Progress(TextColumn(f"resync from {peer}"), BarColumn(), MofNCompleteColumn(),
                    RowsPerSecond(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)


@click.command()
@config_opt
@click.option("--peer", required=True, help="Reload everything this peer sends us.")
def resync(config_path: Path, peer: str) -> None:
    """Re-run the initial load from one peer (after a restore, or to repair drift).

    Shows a progress bar with rows/s and ETA on a terminal; logs progress otherwise."""
    from sync.db.catalog import introspect
    from sync.policy.loader import load_policy
    cfg, conn = _open(config_path)
    by_name = {p.name: p for p in cfg.peers}
    if peer not in by_name:
        raise ConfigError(f"peer {peer!r} is not listed under peers", file=str(config_path),
                          key="peers")
    with conn:
        policy = load_policy(cfg.policy_dir, introspect(conn))
        state.forget_peer(conn, peer)
    link = _peer_link(cfg, peer, policy)
    link.reload()      # afterwards, copies the peer no longer has are removed
    try:
        total = link.initial_size()
        if sys.stderr.isatty():
            with _progress_bar(peer) as bar:
                task = bar.add_task("rows", total=total)
                link.progress = lambda _kind, done: bar.update(task, completed=done)
                batch = link.run_once()
        else:
            link.progress = lambda kind, done: log.info(
                "resync from %s: %d/%d rows (%.0f%%)", peer, done, total,
                100 * done / max(total, 1), extra={"peer": peer, "rows": done, "total": total})
            batch = link.run_once()
        while batch.full:
            batch = link.run_once()
    finally:
        link.close()
    click.echo(f"resync from {peer} done: {total} row(s) loaded")


@click.command()
@config_opt
@click.option("--apply", "apply_", is_flag=True,
              help="Run the statements now (as the tables' owner), instead of printing them.")
@click.option("--daemon-role", default=None,
              help="Also create/grant the daemon's own login role (default: the config's "
                   "database user when printing).")
@click.option("--app-role", default=None,
              help="Also create/grant the application's role: DML on the tracked tables, "
                   "nothing in the sync schema.")
@click.option("--destination-password-env", "password_env", default=None, metavar="VAR",
              help="With --apply: set the destination roles' password from this environment "
                   "variable (sent as a SCRAM verifier; prefer certificates in production).")
def roles(config_path: Path, apply_: bool, daemon_role: str | None,
          app_role: str | None, password_env: str | None) -> None:
    """The SQL for least privilege in this region: the daemon's role, the application's,
    and one role per destination region that its policy lets read (column grants, row-level
    security, journal views)."""
    from sync.db.catalog import introspect
    from sync.policy.loader import load_policy
    from sync.source.egress import apply_egress, local_role_statements, script, set_passwords
    if password_env is not None and password_env not in os.environ:
        raise ConfigError(f"environment variable {password_env} is not set",
                          key="--destination-password-env")
    cfg, conn = _open(config_path)
    with conn:
        schema = introspect(conn)
        policy = load_policy(cfg.policy_dir, schema)
        user = psycopg.conninfo.conninfo_to_dict(
            cfg.database.conninfo(where="database.url")).get("user")
        daemon = daemon_role or (str(user) if user else None)
        if apply_:
            if daemon_role or app_role:
                if daemon is None:
                    raise ConfigError("name the daemon's role with --daemon-role (database.url "
                                      "has no user)", key="database.url")
                with conn.transaction():
                    for stmt in local_role_statements(schema, daemon=daemon,
                                                      app=app_role):
                        conn.execute(stmt)
            made = apply_egress(conn, policy, schema, cfg.destination_regions(), cfg.serve)
            if password_env is not None:
                set_passwords(conn, made, os.environ[password_env])
            click.echo(f"policy {policy.sha} enforced for {', '.join(made) or 'no destination'}")
            return
        click.echo(script(policy, schema, cfg.destination_regions(), conn,
                          daemon=daemon, app=app_role, serve=cfg.serve), nl=False)


@click.command()
@config_opt
@click.option("--to", "region", default=None, help="Only what was served to this region.")
@click.option("--since", type=click.DateTime(), default=None, help="From (inclusive, UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Until (exclusive, UTC).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text",
              show_default=True)
def egress(config_path: Path, region: str | None, since: datetime | None,
           until: datetime | None, fmt: str) -> None:
    """What this region served to each destination (its egress log): per region and
    table, batches, rows, first and last time, the policy hashes in force and the columns
    served — the record of transfers an auditor asks for."""
    import csv
    from datetime import UTC
    _, conn = _open(config_path)
    since = since.replace(tzinfo=UTC) if since else None
    until = until.replace(tzinfo=UTC) if until else None
    with conn:
        rows = state.egress_summary(conn, region=region, since=since, until=until)
    headers = ["to", "table", "batches", "rows", "first", "last", "policy", "columns_sha",
               "columns"]
    records = [dict(zip(headers, r, strict=True)) for r in rows]
    if fmt == "json":
        click.echo(json.dumps(records, indent=2, default=str))
    elif fmt == "csv":   # lists joined with ";", a column set's names with ","
        out = csv.writer(sys.stdout)
        out.writerow(headers)
        for r in rows:
            out.writerow([*r[:6], ";".join(r[6]), ";".join(r[7]),
                          ";".join(",".join(cols) for cols in r[8])])
    elif not rows:
        click.echo("nothing served in that period")
    else:
        _table([[*r[:6], ", ".join(r[6]), " | ".join(", ".join(cols) for cols in r[8])]
                for r in rows], [*headers[:7], "columns"])
