"""Command line: parses arguments, configures logging, calls the library. Nothing else."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from sync.cli.errors import Commands, fail
from sync.errors import PostgresNotFound


@click.group(cls=Commands)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object per line, for log shippers.")
@click.version_option(package_name="regionsync")
def main(verbose: bool, log_format: str) -> None:
    """regionsync: multi-region PostgreSQL sync with field-level residency policies."""
    from sync.runtime.logfmt import configure
    configure(logging.DEBUG if verbose else logging.INFO, log_format)


config_option = click.option("--config", "config_path", type=click.Path(path_type=Path),
                             required=True, help="The region's YAML configuration.")


@main.command()
@config_option
def run(config_path: Path) -> None:
    """Run the daemon for one region (until SIGTERM/SIGINT)."""
    from sync.config import load_config
    from sync.runtime.daemon import Daemon
    Daemon(load_config(config_path)).run()


@main.command()
@config_option
def migrate(config_path: Path) -> None:
    """Bring the region's database to the current schema (idempotent)."""
    from sync.config import load_config
    from sync.db.migrate import migrate as do_migrate
    cfg = load_config(config_path)
    do_migrate(cfg.database.conninfo(where="database.url"), cfg.region, cfg.capture,
               origin_numbers=cfg.origin_numbers)
    click.echo(f"region {cfg.region}: database at head")


@main.command()
@click.option("--rows", default=200, show_default=True, help="Contacts to seed per region.")
@click.option("--keep-running", is_flag=True, help="Keep the mesh running until Ctrl-C.")
def demo(rows: int, keep_running: bool) -> None:
    """Start three local regions, sync them, show what crossed borders, clean up."""
    from sync.testing.demo import run_demo
    try:
        run_demo(rows=rows, keep_running=keep_running)
    except PostgresNotFound as exc:
        fail(exc, 3)
    except KeyboardInterrupt:
        click.echo("interrupted: everything the demo started has been stopped and removed")
        sys.exit(130)


def _register() -> None:
    from sync.cli.forget import forget
    from sync.cli.ops import conflicts, dlq, egress, resync, roles, status
    from sync.cli.peers import peers
    from sync.cli.policy import policy, retract
    for command in (policy, retract, status, dlq, conflicts, resync, roles, egress, forget,
                    peers):
        main.add_command(command)


_register()


if __name__ == "__main__":
    main()
