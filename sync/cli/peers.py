"""Growing and shrinking the mesh, run at each owner: `peers add`, `peers retire`.

Each does at this region what can be done from here — the config file, the destination
role, a catch-up — and prints what is left to do elsewhere. Neither restarts anything: the
running daemon picks the config up on `systemctl reload` (SIGHUP), keeping its other links
running (docs/operations.md, "Adding a region", "Retiring a region").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click
import psycopg
import psycopg.conninfo

from sync.cli.ops import _peer_link, config_opt, open_local
from sync.errors import ConfigError, SyncError, describe, from_db

if TYPE_CHECKING:
    from sync.config import RegionConfig

log = logging.getLogger(__name__)

RELOAD_HINT = ("reload the daemon here (`systemctl reload regionsync`, or `kill -HUP` its "
               "pid): its other links keep running")


@click.group()
def peers() -> None:
    """Add a region to the mesh, or retire one."""


def _our_url_for(cfg: RegionConfig, region: str) -> str:
    """How ``region`` reaches us: our database, as the role we make for it (no secret)."""
    params = psycopg.conninfo.conninfo_to_dict(cfg.database.conninfo(where="database.url"))
    keep = {k: v for k, v in params.items()
            if k in ("host", "port", "dbname", "sslmode", "sslrootcert") and v is not None}
    from sync.source.egress import role_for
    query = "&".join(f"{k}={v}" for k, v in keep.items()
                     if k in ("sslmode", "sslrootcert"))
    return (f"postgresql://{role_for(region)}@{keep.get('host', 'localhost')}:"
            f"{keep.get('port', 5432)}/{keep.get('dbname', 'postgres')}"
            + (f"?{query}" if query else ""))


@peers.command("add")
@config_opt
@click.argument("name")
@click.option("--url", required=True,
              help="The new region's database as the role it makes for us "
                   "(regionsync_to_<this region>); may use ${VAR}.")
@click.option("--password-env", default=None, metavar="VAR",
              help="The environment variable that holds that role's password.")
@click.option("--origins", type=click.Choice(["peer", "any"]), default="peer",
              show_default=True, help="any: the new region is our hub.")
@click.option("--destination-password-env", "dest_password_env", default=None, metavar="VAR",
              help="Set the password of the role the new region reads us as from this "
                   "environment variable (a SCRAM verifier; prefer certificates).")
def add(config_path: Path, name: str, url: str, password_env: str | None, origins: str,
        dest_password_env: str | None) -> None:
    """Add region NAME at this owner: list it under `peers` in the config file, make the
    role it reads us as (its grants from this region's policy), check it answers, and
    print what to do in NAME and here."""
    from sync.config import PeerConfig, edit_peers, load_config
    from sync.db import origins as registry
    from sync.db.catalog import introspect
    from sync.db.connect import connect
    from sync.policy.loader import load_policy
    from sync.protocol import negotiate, served
    from sync.source.egress import apply_egress, set_passwords
    if dest_password_env is not None and dest_password_env not in os.environ:
        raise ConfigError(f"environment variable {dest_password_env} is not set",
                          key="--destination-password-env")
    cfg = load_config(config_path)
    if name == cfg.region:
        raise ConfigError(f"{name} is this region", key="NAME")
    try:
        peer = PeerConfig(name=name, url=url, password_env=password_env,
                          origins=origins)
    except ValueError as exc:
        raise ConfigError(f"{name!r} is not a region name (lower case letters, digits, "
                          "- and _)", key="NAME") from exc
    conninfo = peer.conninfo(where="--url")
    # 1. the role NAME reads us as, from our policy (needs the tables' owner)
    with open_local(cfg) as conn:
        schema = introspect(conn)
        policy = load_policy(cfg.policy_dir, schema,
                             [cfg.region, *(p.name for p in cfg.peers), name])
        try:
            made = apply_egress(conn, policy, schema, [*cfg.destination_regions(), name],
                                cfg.serve)
            if dest_password_env is not None:
                set_passwords(conn, made, os.environ[dest_password_env])
            click.echo(f"here: role regionsync_to_{name.replace('-', '_')} made with policy "
                       f"{policy.sha}'s grants")
        except psycopg.errors.InsufficientPrivilege:
            click.echo(f"here: {cfg.database.safe_url()} may not create roles; run "
                       f"`regionsync roles --config {config_path} --apply` as the tables' "
                       "owner after this", err=True)
    # 2. does NAME answer, as its region, at a protocol we read?
    try:
        with connect(conninfo, application_name=f"regionsync-{cfg.region}-cli") as src:
            owner = served(src)
            if owner.region is not None and owner.region != name:
                raise ConfigError(f"the database at --url belongs to region {owner.region!r}, "
                                  f"not {name!r}", key="--url")
            negotiate(owner, peer=name, region=cfg.region)
            # the origin numbers both databases have met must agree (sync/db/origins.py)
            with open_local(cfg) as local:
                problem = registry.conflict(registry.load(local), registry.load(src))
            if problem is not None:
                raise ConfigError(f"{name} and {cfg.region} number origins differently: "
                                  f"{problem}; give every region the same origin_numbers "
                                  "before NAME's first write", key="origin_numbers")
        click.echo(f"{name}: reachable, {owner.describe()}")
    except psycopg.Error as exc:
        click.echo(f"{name}: not reachable yet ({describe(from_db(exc))}); this region's "
                   "daemon will connect once it is", err=True)
    # 3. the config file
    try:
        changed = edit_peers(config_path, add=peer)
        click.echo(f"{config_path}: {name} added under peers" if changed
                   else f"{config_path}: {name} already listed under peers")
    except ConfigError as exc:
        click.echo(f"{config_path}: not changed ({exc}); add under peers:\n"
                   f"  - name: {name}\n    url: {url}", err=True)
    click.echo(f"next, here: {RELOAD_HINT}")
    click.echo(f"next, in {name} (once per existing region): list {cfg.region} under peers "
               f"with url {_our_url_for(cfg, name)}, then `regionsync migrate`, `regionsync "
               "roles --apply`, and start or reload its daemon")


@peers.command("retire")
@config_opt
@click.argument("name")
def retire(config_path: Path, name: str) -> None:
    """Retire region NAME at this owner, once NAME no longer writes: take it out of the
    config file; apply here every change NAME wrote that any other peer holds (from each
    of them, so from whichever has the most); then drop the role NAME read us as and our
    bookkeeping of it, so that retention no longer waits for it. Run at every survivor;
    running it again is harmless."""
    from sync.config import edit_peers, load_config
    from sync.db import state
    from sync.db.catalog import introspect
    from sync.policy.loader import load_policy
    from sync.source.egress import drop_destination
    cfg = load_config(config_path)
    if name == cfg.region:
        raise ConfigError(f"{name} is this region; retire it from each of the others",
                          key="NAME")
    if edit_peers(config_path, remove=name):
        click.echo(f"{config_path}: {name} removed")
        cfg = load_config(config_path)
    with open_local(cfg) as conn:
        policy = load_policy(cfg.policy_dir, introspect(conn))
    failed = []
    for peer in cfg.peers:
        link = _peer_link(cfg, peer.name, policy)
        try:
            rows = link.catch_up(name)
            click.echo(f"caught up from {peer.name}: {rows} row(s) {name} wrote read and "
                       "merged")
        except (psycopg.Error, SyncError) as exc:
            err = from_db(exc, peer=peer.name) if isinstance(exc, psycopg.Error) else exc
            failed.append(peer.name)
            click.echo(f"{peer.name}: catch-up failed ({describe(err)})", err=True)
        finally:
            link.close()
    if failed:
        click.echo(f"not retired yet: run this again once {', '.join(failed)} answer "
                   f"({name}'s role and records stay until then)", err=True)
        raise SystemExit(1)
    with open_local(cfg) as conn:
        dropped = drop_destination(conn, name)
        with conn.transaction():
            gone = state.forget_region(conn, name)
    click.echo(f"{name} retired here: role {'dropped' if dropped else 'already gone'}; "
               f"token {'forgotten' if gone['peer_state'] else 'none'}; "
               f"{gone['dead_letter']} dead letter(s) dropped")
    click.echo(f"next, here: {RELOAD_HINT}, and retention stops waiting for {name}")
