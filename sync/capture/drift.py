"""Whether the database and the migrations hold what the object files say.

Two checks, both run by ``tests/integration/test_server_objects.py`` on each capture path:

- `pin_problems`: every file is pinned, at its current digest, by the last migration that
  names it — so a file edited without a migration (which no existing database would ever
  receive) fails CI, with the file named;
- `definition_problems`: each function and view in the database is what its file creates
  (the file is run inside a transaction that is rolled back, and PostgreSQL's own
  rendering of both is compared: ``pg_get_functiondef``, ``pg_get_viewdef``, options,
  privileges), nothing in ``sync`` lacks a file, and every tracked table's triggers are
  what the generator makes of it today.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import psycopg

from sync.capture.objects import ServerObject, all_objects
from sync.db.migrate import alembic_dir

# Functions written by code, not by a file: the per-table capture functions the PL/pgSQL
# generator writes (checked through the triggers), and sync.egress_mark, which
# sync.source.egress.mark_function makes from the region's policy each time it is enforced.
GENERATED = re.compile(r"^(capture_(before|after)_|egress_mark$)")


def migration_pins() -> list[tuple[str, dict[str, str]]]:
    """(revision, PINNED) of every migration that applies object files, oldest first."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    scripts = list(ScriptDirectory.from_config(cfg).walk_revisions())   # head first
    return [(s.revision, dict(s.module.PINNED)) for s in reversed(scripts)
            if hasattr(s.module, "PINNED")]


def pin_problems(objects: Iterable[ServerObject],
                 pins: list[tuple[str, dict[str, str]]]) -> list[str]:
    problems = []
    for obj in objects:
        last = [(rev, p[obj.relpath]) for rev, p in pins if obj.relpath in p]
        if not last:
            problems.append(f"{obj.relpath}: no migration applies it; add one that pins "
                            f"{obj.digest()} (see sync/capture/objects.py)")
        elif last[-1][1] != obj.digest():
            problems.append(f"{obj.relpath}: changed since migration {last[-1][0]} applied "
                            f"it; add a migration that pins {obj.digest()}")
    known = {o.relpath for o in objects}
    for rev, p in pins:
        problems += [f"migration {rev} pins {name}, which has no file" for name in p
                     if name not in known]
    return problems


def _function(conn: psycopg.Connection, name: str) -> list[tuple]:
    schema, _, fn = name.partition(".")
    return conn.execute(
        "SELECT pg_get_functiondef(p.oid), p.proacl::text, obj_description(p.oid, 'pg_proc') "
        "FROM pg_proc p WHERE p.pronamespace = %s::regnamespace AND p.proname = %s "
        "ORDER BY p.oid", (schema, fn)).fetchall()


def _view(conn: psycopg.Connection, name: str) -> list[tuple]:
    return conn.execute(
        "SELECT pg_get_viewdef(c.oid), c.reloptions::text, c.relacl::text, "
        "obj_description(c.oid, 'pg_class') FROM pg_class c "
        "WHERE c.oid = to_regclass(%s) AND c.relkind = 'v'", (name,)).fetchall()


def _triggers(conn: psycopg.Connection, table: str) -> list[tuple]:
    return conn.execute(
        "SELECT t.tgname, pg_get_triggerdef(t.oid), pg_get_functiondef(t.tgfoid) "
        "FROM pg_trigger t WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal "
        "ORDER BY t.tgname", (f"public.{table}",)).fetchall()


def definition_problems(conn: psycopg.Connection) -> list[str]:
    """What differs between the database and the files (empty: nothing). Changes nothing:
    everything runs in a transaction that is rolled back."""
    problems = []
    objects = all_objects()
    read = {"function": _function, "view": _view}
    with conn.transaction(force_rollback=True):
        files = {o.name for o in objects}
        for (name,) in conn.execute(
                "SELECT n.nspname || '.' || p.proname FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'sync' "
                "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid "
                "AND d.deptype = 'e') UNION SELECT c.oid::regclass::text FROM pg_class c "
                "WHERE c.relnamespace = 'sync'::regnamespace AND c.relkind = 'v'"):
            if name not in files and not GENERATED.match(name.partition(".")[2]):
                problems.append(f"{name} is in the database but has no file under "
                                "sync/capture/sql/")
        held = {o.name: read[o.kind](conn, o.name) for o in objects}
        for obj in objects:
            if not held[obj.name]:
                problems.append(f"{obj.relpath}: {obj.name} is not in the database")
            conn.execute(obj.text().encode())
        for obj in objects:
            if held[obj.name] and read[obj.kind](conn, obj.name) != held[obj.name]:
                problems.append(f"{obj.relpath}: the database holds another definition of "
                                f"{obj.name}")
        tables = [t for (t,) in conn.execute(
            "SELECT tablename FROM sync.tracked_table ORDER BY 1")]
        before = {t: _triggers(conn, t) for t in tables}
        for t in tables:
            conn.execute("SELECT sync.enable_change_tracking(%s)", (t,))
            if _triggers(conn, t) != before[t]:
                problems.append(f"table {t}: its capture triggers are not what "
                                "sync.enable_change_tracking makes today")
    return problems
