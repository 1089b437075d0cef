"""`regionsync policy …` and `regionsync retract`: parse, call the library, print."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sync.cli.errors import fail
from sync.errors import ConfigError, SyncError

if TYPE_CHECKING:   # imported where the command runs (a fast --help)
    import psycopg

    from sync.config import RegionConfig
    from sync.db.catalog import Schema
    from sync.policy.model import Policy


@contextmanager
def _errors() -> Iterator[None]:
    """Errors end as one line with the documented exit code (see cli_errors)."""
    try:
        yield
    except SyncError as exc:
        fail(exc)


def _context(config_path: Path | None, policy_dir: Path | None, need_db: bool = False
             ) -> tuple[RegionConfig | None, Policy, Schema | None, list[str] | None]:
    """(config, policy, schema, regions) for a command."""
    from sync.cli.ops import open_local
    from sync.config import load_config
    from sync.db.catalog import introspect
    from sync.policy.loader import load_policy
    if need_db and config_path is None:
        raise ConfigError("this command reads the region's database: pass --config")
    cfg = load_config(config_path) if config_path else None
    schema = None
    if cfg is not None:
        with open_local(cfg) as conn:
            schema = introspect(conn)
    regions = [cfg.region, *(p.name for p in cfg.peers)] if cfg else None
    directory = policy_dir or (cfg.policy_dir if cfg else Path("policies"))
    return cfg, load_policy(directory, schema, regions), schema, regions



def _db_context(config_path: Path | None, policy_dir: Path | None
                ) -> tuple[RegionConfig, Policy, Schema, list[str]]:
    """`_context` for a command that reads the region's database: all four are there."""
    cfg, pol, schema, regions = _context(config_path, policy_dir, need_db=True)
    assert cfg is not None and schema is not None and regions is not None
    return cfg, pol, schema, regions

config_opt = click.option("--config", "config_path", type=click.Path(path_type=Path),
                          default=None, help="Region config: live schema and region names.")
policy_opt = click.option("--policy-dir", type=click.Path(path_type=Path), default=None,
                          help="Policy directory (default: the config's, else ./policies).")


@click.group()
def policy() -> None:
    """Review, check and explain the residency policy."""


@policy.command("check")
@policy_opt
@config_opt
def check(policy_dir: Path | None, config_path: Path | None) -> None:
    """Validate policy files (with --config: against the live schema too)."""
    from sync.policy.review import parent_warnings
    with _errors():
        _, pol, schema, regions = _context(config_path, policy_dir)
    warnings = []
    if schema is not None:
        warnings += [f"{c} is unclassified: it is not synced (add it to a rule's columns "
                     "or classify it)" for c in pol.unclassified(schema)]
        warnings += parent_warnings(pol, schema, regions or [])
    for w in warnings:
        click.echo(f"warning: {w}")
    rules = sum(len(r) for r in pol.rules.values())
    click.echo(f"policy {pol.sha} OK: {rules} rule(s) for {len(pol.rules)} table(s) in "
               f"{len(pol.files)} file(s)" + (f", {len(warnings)} warning(s)" if warnings else ""))


@policy.command("explain")
@click.argument("table")
@click.option("--to", "to", multiple=True, help="Only these destination regions.")
@policy_opt
@config_opt
def explain(table: str, to: tuple[str, ...], policy_dir: Path | None,
            config_path: Path | None) -> None:
    """Each column of TABLE: which regions receive it, under which rule."""
    from sync.policy.review import OTHER, universe
    from sync.policy.review import explain as do_explain
    with _errors():
        cfg, pol, schema, regions = _context(config_path, policy_dir)
        if schema is not None and table not in schema.tables:
            raise ConfigError(f"unknown table {table!r}")
        dest = list(to) or [r for r in universe(regions, pol) if not cfg or r != cfg.region]
        lines, filters = do_explain(pol, schema, table, dest)
    label = {OTHER: "other regions" if len(dest) > 1 else "every region"}
    width = max(len(line.column) for line in lines)
    click.echo(f"{table}: what leaves the region, to {', '.join(label.get(r, r) for r in dest)}")
    for line in lines:
        goes = ", ".join(label.get(r, r) for r in line.regions) or "stays home"
        tags = f" [{', '.join(line.tags)}]" if line.tags else ""
        click.echo(f"  {line.column:<{width}}  → {goes:<28} {line.why}{tags}")
    click.echo("rows:" if filters else "rows: none (no rule: the table is region-local)")
    for f in filters:
        click.echo(f"  {f}")
    groups = pol.column_groups.get(table, ())
    click.echo("merge: per column (the newer edit of each column wins)"
               + ("; these merge as one unit:" if groups else ""))
    for group in groups:
        click.echo(f"  [{', '.join(group)}]")
    declared = {frozenset(k) for k in pol.alternate_keys.get(table, ())}
    keys = [(k.columns, f"unique index {k.name}") for k in
            (schema.tables[table].alternate_keys if schema is not None else ())]
    keys += [(k, "declared; not checked without a database") for k in
             pol.alternate_keys.get(table, ()) if schema is None]
    if keys:
        click.echo("alternate keys (created in two regions at once: the first copy keeps the "
                   "key, a later copy keeps it marked, '<key> ~dup-<pk>'):")
    for cols, source in keys:
        mark = "; declared in the policy" if frozenset(cols) in declared and schema else ""
        click.echo(f"  [{', '.join(cols)}] ({source}{mark})")


@policy.command("diff")
@click.argument("old")
@click.argument("new")
@click.option("--regions", default=None, help="Comma-separated regions to compare for "
              "(default: the regions the policies name, plus 'other regions').")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--accept-risk", is_flag=True,
              help="Exit 0 even with high-risk changes (after a reviewer accepted them).")
def diff(old: str, new: str, regions: str | None, as_json: bool, accept_risk: bool) -> None:
    """What starts and stops crossing which border between OLD and NEW, per destination
    region (patterns such as eu-* included). Removing or weakening a classification, or a
    table starting to cross to a region, is HIGH RISK: the command exits 1 unless
    --accept-risk is given, so a CI job on the policy repository can gate merges.

    OLD and NEW are policy directories, single files, or git revisions as REV:path
    (e.g. main:policies)."""
    from sync.policy.review import diff as do_diff
    from sync.policy.sources import load_spec
    with _errors():
        changes = do_diff(load_spec(old), load_spec(new),
                          regions.split(",") if regions else None)
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in changes], indent=2))
    elif not changes:
        click.echo("no change in what crosses borders")
    for c in changes if not as_json else []:
        click.echo(c.line())
    risky = [c for c in changes if c.high_risk]
    if risky and not accept_risk:
        click.echo(f"regionsync: {len(risky)} high-risk change(s) (a protection removed, or a "
                   "table crossing to a new region); pass --accept-risk once reviewed",
                   err=True)
        sys.exit(1)


@policy.command("why")
@click.argument("table")
@click.argument("key")
@click.option("--to", "to", required=True, help="Destination region.")
@policy_opt
@config_opt
def why(table: str, key: str, to: str, policy_dir: Path | None,
        config_path: Path | None) -> None:
    """Whether one row of TABLE goes to a region, which columns, and what decided."""
    from psycopg import sql

    from sync.db.connect import connect
    with _errors():
        cfg, pol, schema, regions = _db_context(config_path, policy_dir)
        info = schema.tables.get(table) if schema else None
        if info is None:
            raise ConfigError(f"unknown table {table!r}")
        try:
            uuid.UUID(key)
        except ValueError:
            raise ConfigError(f"{key!r} is not a key of {table} ({info.pk} is a UUID)") from None
        known = sorted(regions or ())
        if to not in known:
            raise ConfigError(f"--to {to!r}: no such region (known: {', '.join(known)})")
        rule = pol.rule_for(table, to)
        with connect(cfg.database.conninfo(where="database.url"),
                     application_name="regionsync-cli") as conn:
            passes = sql.SQL("true") if rule is None or rule.rows is None \
                else sql.SQL("coalesce({}, false)").format(rule.rows.to_sql("t"))
            row = conn.execute(sql.SQL("SELECT sync_origin, {} FROM public.{} t WHERE {} = %s")
                               .format(passes, sql.Identifier(table), sql.Identifier(info.pk)),
                               (key,)).fetchone()
    if row is None:
        fail(ConfigError(f"{table} {key} does not exist in region {cfg.region}"))
    origin, matched = row
    if rule is None:
        click.echo(f"{table} {key} → {to}: NOT SENT — no rule sends {table} to {to} "
                   "(tables without a rule stay home)")
        return
    verdict = "SENT" if matched else "NOT SENT"
    click.echo(f"{table} {key} → {to}: {verdict} (rule {rule.where})")
    if rule.rows is not None:
        click.echo(f"  row filter: {rule.rows.describe()} → {'true' if matched else 'false'}")
    click.echo(f"  last written in {origin}" + ("" if origin == cfg.region else
               f"; in a mesh {to} receives it from {origin}, not from {cfg.region}"))
    if matched:
        wire = rule.wire_columns(info)
        click.echo(f"  columns sent: {', '.join(wire)}")
        held = [c for c in info.columns if c not in wire]
        for c in held:
            tags = pol.tags(table, c)
            reason = ("assigned by each region" if c == "versionnumber" else
                      f"never leaves ({', '.join(sorted(tags & pol.never_leaves_region))})"
                      if tags & pol.never_leaves_region else "not on the allow-list")
            click.echo(f"  withheld: {c} — {reason}")


@policy.command("drift")
@policy_opt
@config_opt
@click.option("--local-only", is_flag=True,
              help="Do not ask the peers: check copies against our own policy only.")
def drift(policy_dir: Path | None, config_path: Path | None, local_only: bool) -> None:
    """Copies in this region that policy no longer allows (exit 1 if any): ours, and each
    owner's own (what it still lets us read, through the role it made for us)."""
    with _errors():
        cfg, pol, schema, _ = _db_context(config_path, policy_dir)
        items, notes, _ = _drift(cfg, pol, schema, local_only)
    for note in notes:
        click.echo(f"note: {note}")
    for item in items:
        click.echo(item.line())
    if items:
        click.echo(f"{len(items)} out-of-policy item(s); `regionsync retract --config …` "
                   "removes them")
        sys.exit(1)
    click.echo(f"no drift: every copy in {cfg.region} is allowed by policy {pol.sha}"
               + ("" if local_only else " and by its owner"))


def _drift(cfg: RegionConfig, pol: Policy, schema: Schema, local_only: bool,
           conn: psycopg.Connection | None = None) -> tuple[list[Any], list[str], Any]:
    """Drift items and notes; with ``conn`` (a local connection) retract can use them."""
    import contextlib

    import psycopg

    from sync.db.connect import connect
    from sync.errors import describe
    from sync.policy.retract import find_drift, owners_truth
    with contextlib.ExitStack() as stack:
        if conn is None:
            conn = stack.enter_context(connect(cfg.database.conninfo(where="database.url"),
                                               application_name="regionsync-cli"))
        owners, notes = {}, []
        for peer in [] if local_only else cfg.peers:
            try:
                owners[peer.name] = stack.enter_context(connect(
                    peer.conninfo(where=f"peers[{peer.name}].url"),
                    application_name="regionsync-cli"))
            except psycopg.Error as exc:   # one unreachable peer: the rest is still checked
                notes.append(f"{peer.name} unreachable ({describe(exc)}); its "
                             "copies checked against our own policy only")
        rule_for, withheld, more = owners_truth(conn, schema, pol, cfg.region, owners)
        items = find_drift(conn, schema, pol, cfg.region, rule_for=rule_for,
                           withheld=withheld)
        return items, notes + more, rule_for


@policy.command("report")
@policy_opt
@config_opt
@click.option("--regions", default=None, help="Comma-separated destination regions (default: "
              "the config's peers, else every region the policy names, each pattern, and "
              "'other regions').")
@click.option("--against", default=None, metavar="SPEC",
              help="Also show what changed against this policy (a directory, a file, or a git "
                   "REV:path such as main:policies).")
@click.option("--format", "fmt", type=click.Choice(["html", "markdown"]), default="html",
              show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write to this file (default: standard output).")
def report(policy_dir: Path | None, config_path: Path | None, regions: str | None,
           against: str | None, fmt: str, output: Path | None) -> None:
    """The residency map: every table and column × destination region — crosses, crosses
    for matching rows only (the filter in words), or stays home, with the rule's file:line
    or the reason — as a self-contained HTML page or Markdown, with --against what changed."""
    from sync.policy import report as rep
    from sync.policy.review import diff as do_diff
    from sync.policy.review import universe
    from sync.policy.sources import load_spec
    with _errors():
        cfg, pol, schema, names = _context(config_path, policy_dir)
        if regions:
            dest = regions.split(",")
        elif cfg is not None:
            dest = sorted({*(names or [])[1:], *cfg.destination_regions()})
        else:
            dest = universe(None, pol)
        changes = do_diff(load_spec(against), pol, dest) if against else None
        made = rep.build(pol, schema, dest, home=cfg.region if cfg else None,
                         changes=changes, against=against)
    text = rep.html(made, pol) if fmt == "html" else rep.markdown(made)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output} (policy {pol.sha}, {len(made.rows)} columns × "
                   f"{len(dest)} regions)")


@policy.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of policy files (shipped as policies/policy.schema.json)."""
    from sync.policy.loader import policy_json_schema
    click.echo(json.dumps(policy_json_schema(), indent=2))


@click.command()
@policy_opt
@config_opt
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--local-only", is_flag=True,
              help="Do not ask the peers: retract by our own policy only.")
def retract(policy_dir: Path | None, config_path: Path | None, dry_run: bool,
            local_only: bool) -> None:
    """Remove copies policy no longer allows here (NULL columns / delete rows): by our
    policy and by each owner's (see `policy drift`).

    Nothing is sent back: the owning region keeps its data."""
    from sync.db.connect import connect
    from sync.policy.retract import retract as do_retract
    with _errors():
        cfg, pol, schema, _ = _db_context(config_path, policy_dir)
        with connect(cfg.database.conninfo(where="database.url"),
                     application_name="regionsync-retract") as conn:
            items, notes, rule_for = _drift(cfg, pol, schema, local_only, conn)
            for note in notes:
                click.echo(f"note: {note}")
            if dry_run or not items:
                for item in items:
                    click.echo(f"would retract: {item.line()}")
                if not items:
                    click.echo("nothing to retract")
                return
            results = do_retract(conn, pol, cfg.region, items, rule_for=rule_for)
    failed = 0
    for item, n, error in results:
        if error:
            failed += 1
            click.echo(f"FAILED {item.line()}: {error}", err=True)
        else:
            click.echo(f"retracted {n} row(s): {item.line()}")
    sys.exit(1 if failed else 0)
