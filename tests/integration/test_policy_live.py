"""Policy as code against real regions: hot reload, backfill, drift/retract, review CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.config import RegionConfig
from sync.policy import load_policy
from sync.policy.retract import find_drift, retract
from sync.runtime.daemon import Daemon
from tests.fix_daemons import mesh_config, wait_for
from tests.fix_pg import POLICIES, Mesh
from tests.integration.helpers import cli, contact

BASE = """
classification:
  contact.medical_notes: [medical]
  contact.implant_serial: [medical]
never_leaves_region: [medical]
rules:
  contact:
{rule}
"""


def policy_dir(tmp_path: Path, rule: str, name: str = "policies") -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "p.yaml").write_text(BASE.format(rule=rule))
    return d




def test_diff_shows_exactly_what_starts_and_stops_crossing(tmp_path: Path) -> None:
    old = policy_dir(tmp_path, "    columns: [lastname, telephone1]", "old")
    new = policy_dir(tmp_path, "    - {columns: [lastname], to: [eu-*]}\n"
                               "    - {columns: [lastname, emailaddress1], to: [us-east]}",
                     "new")
    proc = cli("policy", "diff", str(old), str(new), "--regions", "eu-north,us-east")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["- contact.telephone1 → eu-north, us-east",
                                        "+ contact.emailaddress1 → us-east"]
    as_json = cli("policy", "diff", str(old), str(new), "--regions", "eu-north,us-east",
                  "--json")
    assert '"change": "starts"' in as_json.stdout and '"emailaddress1"' in as_json.stdout


def test_diff_without_regions_hides_no_narrowing_for_a_pattern(tmp_path: Path) -> None:
    old = policy_dir(tmp_path, "    - {columns: [lastname, address1_country, birthdate, "
                               "telephone1], to: [eu-*]}\n"
                               "    - {columns: [lastname], to: [us-east]}", "old")
    new = policy_dir(tmp_path, "    - columns: [lastname, address1_country]\n"
                               "      rows: \"address1_country = 'IE'\"\n"
                               "      to: [eu-*]\n"
                               "    - {columns: [lastname], to: [us-east]}", "new")
    proc = cli("policy", "diff", str(old), str(new))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "- contact.birthdate → regions matching eu-*" in lines
    assert "- contact.telephone1 → regions matching eu-*" in lines
    assert any(ln.startswith("~ contact rows: was “every row”") and
               ln.endswith("→ regions matching eu-*") for ln in lines), lines


def test_removing_a_protection_is_high_risk_and_gates_the_merge(tmp_path: Path) -> None:
    old = policy_dir(tmp_path, "    columns: [lastname]", "old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "p.yaml").write_text("rules:\n  contact:\n    columns: [lastname, medical_notes]\n"
                                "  account:\n    columns: [name]\n")
    proc = cli("policy", "diff", str(old), str(new))
    assert proc.returncode == 1
    assert "HIGH RISK ! classification of contact.medical_notes loses medical" in proc.stdout
    assert "HIGH RISK ! never_leaves_region no longer holds medical" in proc.stdout
    assert "HIGH RISK + account" in proc.stdout          # a table crossing to a new region
    assert "+ contact.medical_notes → other regions" in proc.stdout
    assert "high-risk change(s)" in proc.stderr and "--accept-risk" in proc.stderr
    accepted = cli("policy", "diff", str(old), str(new), "--accept-risk", "--json")
    assert accepted.returncode == 0
    risks = {(c["change"], c["risk"]) for c in json.loads(accepted.stdout)}
    assert ("protection_removed", "high") in risks and ("starts", "normal") in risks


def test_diff_between_git_revisions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(POLICIES, repo / "policies")
    def git(*a: str) -> None:
        subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)
    git("init", "-q")
    git("-c", "user.email=c@x", "-c", "user.name=c", "add", ".")
    git("-c", "user.email=c@x", "-c", "user.name=c", "commit", "-qm", "v1")
    f = repo / "policies" / "regionsync.yaml"
    f.write_text(f.read_text().replace("    columns: [ordernumber, accountid, contactid, name, "
                                       "totalamount, statecode]",
                                       "    columns: [ordernumber, accountid, contactid, name, "
                                       "statecode]"))
    git("-c", "user.email=c@x", "-c", "user.name=c", "commit", "-qam", "v2")
    proc = subprocess.run([sys.executable, "-m", "sync.cli", "policy", "diff",
                           "HEAD~1:policies", "HEAD:policies"], capture_output=True, text=True,
                          cwd=repo, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "- salesorder.totalamount → every region" or \
        proc.stdout.strip() == "- salesorder.totalamount → other regions"


def test_policy_edited_while_the_daemon_runs(mesh: Mesh, tmp_path: Path) -> None:
    pol = policy_dir(tmp_path, "    columns: [firstname, lastname]")
    cfg = RegionConfig(region="eu-north", database={"url": mesh.urls["eu-north"]},
                       peers=[{"name": "eu-west", "url": mesh.urls["eu-west"]}],
                       policy_dir=pol, poll_interval=0.2, metrics={"port": 0})
    daemon = Daemon(cfg)
    daemon.start()
    north, west = mesh.conn("eu-north"), mesh.conn("eu-west")
    try:
        first = contact(west, "Before")
        wait_for(lambda: north.execute("SELECT count(*) FROM contact").fetchone()[0] == 1)
        assert north.execute("SELECT firstname FROM contact").fetchone()[0] == "Jo"
        sha_before = daemon.policy.current().sha
        # narrow: firstname stops crossing; the next pages obey
        (pol / "p.yaml").write_text(BASE.format(rule="    columns: [lastname]"))
        wait_for(lambda: daemon.policy.current().sha != sha_before)
        second = contact(west, "After")
        wait_for(lambda: north.execute("SELECT count(*) FROM contact").fetchone()[0] == 2)
        assert north.execute("SELECT firstname FROM contact WHERE contactid = %s",
                             (second,)).fetchone()[0] is None
        good = daemon.policy.current().sha
        # an invalid edit is refused; the last good policy stays in force
        (pol / "p.yaml").write_text(BASE.format(rule="    columns: [lastname, medical_notes]"))
        registry = daemon.metrics.registry
        wait_for(lambda: registry.get_sample_value(
            "regionsync_policy_reload_failures_total") == 1.0)
        assert daemon.policy.current().sha == good
        assert registry.get_sample_value("regionsync_policy_info", {"sha": good}) == 1.0
        third = contact(west, "Third", medical="secret")
        wait_for(lambda: north.execute("SELECT count(*) FROM contact").fetchone()[0] == 3)
        assert north.execute("SELECT firstname, medical_notes FROM contact WHERE contactid = %s",
                             (third,)).fetchone() == (None, None)
        audit = north.execute("SELECT sha FROM sync.policy_audit ORDER BY id").fetchall()
        assert [a[0] for a in audit] == [sha_before, good]
        pages = north.execute("SELECT DISTINCT policy_sha FROM sync.integration_log").fetchall()
        assert {p[0] for p in pages} <= {sha_before, good}
        assert first
    finally:
        daemon.stop()


def test_widening_backfills_and_narrowing_is_retracted_without_echo(mesh: Mesh,
                                                                     tmp_path: Path) -> None:
    mesh.policy = load_policy(policy_dir(tmp_path, "    columns: [lastname, address1_country]",
                                         "narrow"))
    west = mesh.conn("eu-west")
    for i in range(30):
        contact(west, f"C{i}", country="IE" if i % 3 else "US")
    west.execute("UPDATE contact SET telephone1 = '+353 ' || lastname")
    mesh.sync()
    assert mesh.one("eu-north", "SELECT count(telephone1) FROM contact") == 0
    # widen: telephone1 may now cross; rows written long ago are backfilled
    mesh.policy = load_policy(policy_dir(
        tmp_path, "    columns: [lastname, address1_country, telephone1]", "wide"))
    mesh.sync()
    assert mesh.one("eu-north", "SELECT count(telephone1) FROM contact") == 30
    assert mesh.one("us-east", "SELECT count(telephone1) FROM contact") == 30
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.integration_log "
                                "WHERE kind = 'backfill' AND rows > 0") >= 1
    # narrow: phones stop crossing, and only Irish contacts may stay abroad — the copies
    # go with the next poll, by themselves (invariant 8), not when someone runs `retract`
    mesh.policy = load_policy(policy_dir(
        tmp_path, "    columns: [lastname, address1_country]\n"
                  "    rows: \"address1_country = 'IE'\"", "narrower"))
    west_before = mesh.rows("eu-west", "contact", "eu-west")
    west_phones = mesh.one("eu-west", "SELECT count(telephone1) FROM contact")
    mesh.sync()
    schema = mesh.schema
    for region in ("eu-north", "us-east"):
        assert mesh.one(region, "SELECT count(*) FROM contact") == 20
        assert mesh.one(region, "SELECT count(telephone1) FROM contact") == 0
        assert find_drift(mesh.conn(region), schema, mesh.policy, region) == []
        logged = mesh.conn(region).execute(
            "SELECT action, rows FROM sync.retraction_log ORDER BY id").fetchall()
        assert logged == [("null_columns", 30), ("delete_rows", 10)]
    assert retract(mesh.conn("eu-north"), mesh.policy, "eu-north", []) == []
    # nothing travels back: the owner keeps every row and value
    assert mesh.sync() == 0
    assert mesh.rows("eu-west", "contact", "eu-west") == west_before
    assert mesh.one("eu-west", "SELECT count(*) FROM contact") == 30
    assert mesh.one("eu-west", "SELECT count(telephone1) FROM contact") == west_phones == 30


def test_filter_values_never_reach_sql_text(mesh: Mesh, tmp_path: Path) -> None:
    evil = "x'); DROP TABLE contact; --"
    mesh.policy = load_policy(policy_dir(
        tmp_path, "    columns: [lastname]\n    rows: \"lastname != '"
        + evil.replace("'", "''") + "'\""))
    cluster = mesh.clusters["eu-west"]
    mesh.conn("eu-west").execute(f'ALTER DATABASE "{mesh.dbname}" SET log_statement = \'all\'')
    west = mesh.new_conn("eu-west")
    contact(west, evil)
    keep = contact(west, "Fine")
    offset = cluster.logfile.stat().st_size
    mesh.pull("eu-north", "eu-west")
    time.sleep(0.2)
    log = cluster.logfile.read_bytes()[offset:].decode(errors="replace")
    ours = [line for line in log.splitlines() if " regionsync-" in line]
    statements = [line for line in ours if "statement:" in line or "execute <" in line]
    assert any("current_setting('regionsync.f0')" in line for line in statements)
    assert not any("DROP TABLE" in line for line in statements), statements
    # it travelled as a bind parameter (logged by the server as such), not as SQL
    assert any("parameters:" in line and "DROP TABLE" in line for line in ours)
    assert [r[0] for r in mesh.rows("eu-north", "contact")] == [keep]


def test_review_commands_on_a_live_region(mesh: Mesh, tmp_path: Path) -> None:
    pol = policy_dir(tmp_path, "    columns: [lastname, accountid, address1_country]\n"
                               "    rows: \"address1_country = 'IE'\"\n    to: [eu-*]")
    urls = {r: mesh.urls[r] for r in ("eu-west", "eu-north", "us-east")}
    cfg = mesh_config(tmp_path / "west.yaml", urls, "eu-west", policy_dir=pol)
    cid = contact(mesh.conn("eu-west"), "Why", country="IE")
    check = cli("policy", "check", "--config", str(cfg))
    assert check.returncode == 0, check.stderr
    assert "contact goes to eu-north but its parent account does not" in check.stdout
    assert "warning: contact.firstname is unclassified" in check.stdout
    explain = cli("policy", "explain", "contact", "--config", str(cfg))
    assert re.search(r"lastname\s+→ eu-north\s+rule .*p.yaml:\d+", explain.stdout), explain.stdout
    assert re.search(r"medical_notes\s+→ stays home\s+never leaves its region \(medical\)",
                     explain.stdout)
    assert "only rows where address1_country is 'IE'" in explain.stdout
    why = cli("policy", "why", "contact", str(cid), "--to", "eu-north", "--config", str(cfg))
    assert why.returncode == 0, why.stderr
    assert "SENT" in why.stdout and "row filter: address1_country is 'IE' → true" in why.stdout
    assert "withheld: medical_notes — never leaves (medical)" in why.stdout
    not_sent = cli("policy", "why", "contact", str(cid), "--to", "us-east", "--config", str(cfg))
    assert "NOT SENT — no rule sends contact to us-east" in not_sent.stdout


SAFE = ["firstname", "emailaddress1", "telephone1", "address1_country", "statecode"]
REGIONS3 = ["eu-west", "eu-north", "us-east"]


@st.composite
def random_policies(draw) -> str:
    cols = draw(st.lists(st.sampled_from(SAFE), unique=True))
    to = draw(st.lists(st.sampled_from(REGIONS3), min_size=1, unique=True))
    rule = f"    columns: [lastname, {', '.join(cols)}]\n    to: [{', '.join(to)}]"
    if "statecode" in cols and draw(st.booleans()):
        rule += f"\n    rows: \"statecode in (0, {draw(st.integers(1, 2))})\""
    return rule


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rule=random_policies(),
       writes=st.lists(st.tuples(st.sampled_from(REGIONS3), st.integers(0, 3)),
                       min_size=1, max_size=10))
def test_random_policies_never_leak(pg_clusters, tmp_path_factory, rule: str,
                                    writes: list[tuple[str, int]]) -> None:
    """Property: for random policies and rows written in random regions, no column outside
    the allow-list (or tagged never_leaves_region) is non-NULL outside the row's origin."""
    policy = load_policy(policy_dir(tmp_path_factory.mktemp("pol"), rule))
    m = Mesh(pg_clusters, policy)
    try:
        for i, (region, state) in enumerate(writes):
            m.conn(region).execute("""
                INSERT INTO contact (lastname, firstname, emailaddress1, telephone1,
                                     address1_country, statecode, medical_notes,
                                     implant_serial, birthdate)
                VALUES (%s, 'f', 'e', 't', 'IE', %s, 'm', 's', '2000-01-01')""",
                                   (f"L{i}", state))
        m.sync()
        defaults = {"statecode": 0}   # NOT NULL DEFAULT 0: a copy gets the default
        for region in REGIONS3:
            rule_here = policy.rule_for("contact", region)
            info = m.schema.tables["contact"]
            # the sent columns, their versions (no other column's) and the local change mask
            allowed = {*rule_here.wire_columns(info), *rule_here.version_columns(info),
                       "sync_changed"} if rule_here else set()
            rows = m.conn(region).execute(
                "SELECT to_jsonb(c) FROM contact c WHERE sync_origin <> %s",
                (region,)).fetchall()
            if rule_here is None:
                assert rows == []
            for (row,) in rows:
                leaked = {k for k, v in row.items() if v is not None
                          and k not in allowed and k != "versionnumber"
                          and defaults.get(k, object()) != v}
                assert not leaked, (region, rule, leaked)
                if rule_here.rows:
                    assert rule_here.rows.evaluate(row), (region, rule, row)
    finally:
        m.close()
