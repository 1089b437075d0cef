"""`regionsync forget`: erase records in every region, and show each region's receipt."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import click
import psycopg

from sync.errors import ConfigError


@click.command()
@click.argument("table")
@click.argument("keys", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="The config of the region where the record was written (its home).")
@click.option("--receipts", "only_receipts", is_flag=True,
              help="Erase nothing: show the receipts of an earlier `forget` of these keys.")
@click.option("--wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for every peer's receipt (peers erase when they next "
                   "poll this region).")
@click.option("--json", "as_json", is_flag=True, help="Receipts as JSON.")
def forget(table: str, keys: tuple[str, ...], config_path: Path, only_receipts: bool,
           wait: float, as_json: bool) -> None:
    """Erase TABLE records KEY… in every region that holds them (a data subject's request).

    Here: the record and its region-local children are deleted, references that may be
    empty are cleared, and every value still held in the conflict log, dead letters or
    journal is removed. An immortal tombstone keeps any region from bringing the record
    back. Every peer that received it does the same when it next polls, and writes a
    receipt; this command prints the receipts it can read (exit 1 while one is missing).
    """
    from sync.apply.erasure import forget as do_forget
    from sync.apply.erasure import receipts_from
    from sync.cli.ops import _open
    from sync.db.catalog import introspect
    from sync.db.connect import connect
    from sync.errors import describe
    from sync.policy.loader import load_policy
    try:
        ids = [uuid.UUID(k) for k in keys]
    except ValueError as exc:
        raise ConfigError(f"not a key (UUID): {exc}") from exc
    cfg, conn = _open(config_path)
    with conn:
        schema = introspect(conn)
        if table not in schema.tables:
            raise ConfigError(f"unknown table {table!r} in {cfg.region}")
        policy = load_policy(cfg.policy_dir, schema)
        if only_receipts:
            mine = receipts_from(conn, cfg.region, table, ids)
        else:
            mine = do_forget(conn, schema, cfg.region, table, ids)
    receipts = list(mine)
    pending: dict[str, str] = {}
    deadline = time.monotonic() + wait
    peers = {p.name: p for p in cfg.peers}
    while True:
        pending = {}
        for name, peer in peers.items():
            if policy.rule_for(table, name) is None:
                continue                     # never sent there: nothing to erase
            try:
                with connect(peer.conninfo(where=f"peers[{name}].url"),
                             application_name=f"regionsync-{cfg.region}-forget") as c:
                    got = receipts_from(c, cfg.region, table, ids)
            except psycopg.Error as exc:
                pending[name] = f"unreachable ({describe(exc)})"
                continue
            done = {r.key for r in got if r.table == table}
            receipts += [r for r in got if r not in receipts]
            if not set(ids) <= done:
                pending[name] = "no receipt yet (it erases when it next polls this region)"
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if as_json:
        click.echo(json.dumps({"receipts": [r.as_dict() for r in receipts],
                               "pending": pending}, indent=2))
    else:
        for r in receipts:
            click.echo(r.line())
        for name in sorted(set(peers) - set(pending)):
            if policy.rule_for(table, name) is None:
                click.echo(f"{name}: {table} is not sent there under policy {policy.sha}: "
                           "nothing to erase")
        for name, why in sorted(pending.items()):
            click.echo(f"{name}: {why}")
    sys.exit(1 if pending else 0)
