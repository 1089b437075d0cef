"""The server-side objects are written down once: the database holds what the files in
``sync/capture/sql/`` say, on both capture paths, and no file changes without a migration
that applies it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest

from sync.capture.drift import definition_problems, migration_pins, pin_problems
from sync.capture.objects import all_objects
from sync.db.migrate import migrate
from sync.errors import ConfigError
from sync.policy import load_policy
from sync.source.egress import apply_egress
from tests.fix_pg import Mesh


@pytest.mark.parametrize("kind", ["c", "plpgsql"])
def test_the_database_holds_what_the_files_say(mesh: Mesh, kind: str,
                                               tmp_path: Path) -> None:
    try:
        migrate(mesh.urls["eu-west"], "eu-west", kind)
    except ConfigError as exc:
        pytest.skip(f"the C capture extension is not installed here: {exc}")
    conn = mesh.conn("eu-west")
    assert conn.execute("SELECT sync.capture_kind()").fetchone() == (kind,)
    assert definition_problems(conn) == []
    # enforcing a policy with row filters rewrites sync.egress_mark (made by code from the
    # policy, like the per-table triggers), and nothing else
    (tmp_path / "filtered.yaml").write_text(
        "classification: {contact.medical_notes: [medical], contact.implant_serial: [medical]}\n"
        "never_leaves_region: [medical]\n"
        "rules:\n  contact:\n    columns: [lastname, address1_country]\n"
        "    rows: \"address1_country = 'IE'\"\n")
    apply_egress(conn, load_policy(tmp_path, mesh.schema), mesh.schema, ["eu-north", "us-east"])
    assert "egress_sent" in conn.execute(
        "SELECT prosrc FROM pg_proc WHERE oid = 'sync.egress_mark'::regproc").fetchone()[0]
    assert definition_problems(conn) == []
    # and the check can fail: a function replaced behind the migrations' back is found
    conn.execute("CREATE OR REPLACE FUNCTION sync.capture_kind() RETURNS text LANGUAGE sql "
                 "STABLE AS $$ SELECT 'c' $$")
    assert definition_problems(conn) == [
        "functions/sync.capture_kind.sql: the database holds another definition of "
        "sync.capture_kind"]


def test_triggers_and_stray_objects_are_compared_too(mesh: Mesh) -> None:
    conn = mesh.conn("eu-west")
    conn.execute("DROP TRIGGER regionsync_refuse_truncate ON public.shipment")
    conn.execute("CREATE VIEW sync.unlisted AS SELECT 1 AS one")
    assert sorted(definition_problems(conn)) == [
        "sync.unlisted is in the database but has no file under sync/capture/sql/",
        "table shipment: its capture triggers are not what sync.enable_change_tracking "
        "makes today"]


def test_every_file_is_pinned_at_its_text_by_its_last_migration() -> None:
    pins = migration_pins()
    assert [rev for rev, _ in pins][:1] == ["0017"]
    assert pin_problems(all_objects(), pins) == []


def test_a_file_edited_without_a_migration_is_named(tmp_path: Path) -> None:
    objects = all_objects()
    i = next(i for i, o in enumerate(objects) if o.name == "sync.journal_since")
    edited = tmp_path / objects[i].path.name
    edited.write_text(objects[i].text().replace("RETURNS", "RETURNS  ", 1))
    objects[i] = dataclasses.replace(objects[i], path=edited)
    assert [p.split(";")[0] for p in pin_problems(objects, migration_pins())] == [
        "functions/sync.journal_since.sql: changed since migration 0017 applied it"]


def test_reapplying_the_files_keeps_a_policy_made_marking_function(mesh: Mesh,
                                                                    tmp_path: Path) -> None:
    """An upgrade runs the pinned files over a live region: its row-filter marking (made from
    its policy) must survive, or new rows of a filtered table would wait, unmarked, until
    the next policy load."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from sync.capture import objects

    conn = mesh.conn("eu-west")
    (tmp_path / "filtered.yaml").write_text(
        "rules:\n  contact:\n    columns: [lastname, address1_country]\n"
        "    rows: \"address1_country = 'IE'\"\n")
    apply_egress(conn, load_policy(tmp_path, mesh.schema), mesh.schema, ["eu-north"])
    marking = "SELECT prosrc FROM pg_proc WHERE oid = 'sync.egress_mark'::regproc"
    made = conn.execute(marking).fetchone()[0]
    assert "address1_country" in made
    # every file at the pin that applies its current text (0017, or the later one)
    pinned: dict[str, str] = {}
    for _, pins in migration_pins():
        pinned.update(pins)
    engine = create_engine("postgresql+psycopg://", poolclass=NullPool,
                           creator=lambda: psycopg.connect(mesh.urls["eu-west"]))
    with engine.begin() as sa:
        assert len(objects.apply(sa, pinned)) == len(pinned)
    engine.dispose()
    assert conn.execute(marking).fetchone()[0] == made
    assert definition_problems(conn) == []
