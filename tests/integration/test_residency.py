"""Residency enforced by the region that owns the data (invariant 1), in its own database.

The owner turns its policy into one role per destination (column grants, row-level
security, journal views). A destination that connects as its role reads no more than the
owner's policy grants — whatever its own policy says, and even with plain SQL.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest

from sync.link import PeerLink
from sync.policy import Policy, load_policy
from sync.source.egress import apply_egress, role_for
from tests.fix_daemons import write_config
from tests.fix_pg import POLICIES, Mesh, new_link
from tests.integration.helpers import cli, contact

SECRETS = ("HIV positive; on ART", "PACEMAKER-SN-4711", "Hypertension stage 2")

HOSTILE = """version: 1
description: A receiver that wants what it must not have.
rules:
  contact:
    columns: [accountid, firstname, lastname, emailaddress1, address1_country,
              medical_notes, implant_serial]
  medicalcase:
    columns: [contactid, diagnosis, treatment, openedon]
"""


def as_destination(mesh: Mesh, owner: str, destination: str) -> str:
    """The owner's database URL, logging in as the role it made for ``destination``."""
    return psycopg.conninfo.make_conninfo(mesh.urls[owner], user=role_for(destination))


def _seed_owner(mesh: Mesh) -> uuid.UUID:
    west = mesh.conn("eu-west")
    cid = contact(west, "Patient", medical=SECRETS[0], implant=SECRETS[1])
    west.execute("INSERT INTO medicalcase (contactid, diagnosis, treatment) VALUES (%s, %s, "
                 "'ACE inhibitor')", (cid, SECRETS[2]))
    return cid


def _policy_dir(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "policy.yaml").write_text(text)
    return d


def _holds_secret(mesh: Mesh, region: str) -> bool:
    conn = mesh.conn(region)
    rows = conn.execute("SELECT coalesce(medical_notes, '') || coalesce(implant_serial, '') "
                        "FROM contact").fetchall()
    cases = conn.execute("SELECT count(*) FROM medicalcase").fetchone()[0]
    return cases > 0 or any(s in r[0] for r in rows for s in SECRETS)


def test_a_hostile_receiver_policy_gets_nothing_the_owner_does_not_grant(
        mesh: Mesh, tmp_path: Path, shipped_policy) -> None:
    _seed_owner(mesh)
    apply_egress(mesh.conn("eu-west"), shipped_policy, mesh.schema, ["eu-north", "us-east"])
    hostile = load_policy(_policy_dir(tmp_path, "hostile", HOSTILE), mesh.schema)
    # through its role: the contact arrives, nothing medical does
    link = new_link(region="eu-north", peer="eu-west",
                    peer_conninfo=as_destination(mesh, "eu-west", "eu-north"),
                    local_conninfo=mesh.urls["eu-north"], policy=lambda: hostile)
    try:
        link.run_once()
        assert set(link.refused) == {"medicalcase", "contact"}
        assert "does not send medicalcase" in link.refused["medicalcase"]
        assert "medical_notes" in link.refused["contact"]
    finally:
        link.close()
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE lastname = 'Patient'") == 1
    assert not _holds_secret(mesh, "eu-north")
    # the same hostile policy with the owner's own credentials (what the README used to
    # show) would have taken everything: the role is what protects the data
    owner_creds = new_link(region="us-east", peer="eu-west", peer_conninfo=mesh.urls["eu-west"],
                           local_conninfo=mesh.urls["us-east"], policy=lambda: hostile)
    try:
        owner_creds.run_once()
    finally:
        owner_creds.close()
    assert _holds_secret(mesh, "us-east")


def test_the_destination_role_with_plain_sql(mesh: Mesh, tmp_path: Path) -> None:
    patient = _seed_owner(mesh)
    west = mesh.conn("eu-west")
    swede = contact(west, "Swede", country="SE")
    american = contact(west, "American", country="US")
    filtered = load_policy(_policy_dir(tmp_path, "owner", """version: 1
classification:
  contact.medical_notes: [medical]
  contact.implant_serial: [medical]
  medicalcase.*: [medical]
never_leaves_region: [medical]
rules:
  contact:
    columns: [lastname, address1_country]
    rows: "address1_country in ('IE', 'SE')"
"""), mesh.schema)
    apply_egress(west, filtered, mesh.schema, ["us-east"])
    with psycopg.connect(as_destination(mesh, "eu-west", "us-east"), autocommit=True) as conn:
        for forbidden in ("SELECT medical_notes FROM contact",
                          "SELECT implant_serial FROM contact",
                          "SELECT * FROM medicalcase",
                          "SELECT * FROM sync.change_set",
                          "SELECT * FROM sync.tombstone",
                          "SELECT * FROM sync.peer_state",
                          "UPDATE contact SET lastname = 'x'",
                          "INSERT INTO sync.tombstone VALUES ('contact', gen_random_uuid(), "
                          "now(), 'us-east')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
        # rows outside the owner's filter do not exist for this role
        names = {r[0] for r in conn.execute("SELECT lastname FROM contact")}
        assert names == {"Patient", "Swede"}
        # the journal shows no entry of a region-local table, nor of one not sent, and
        # within the filtered table no key the owner has not sent: not even that the
        # American changed, or when
        def journal_keys() -> set[uuid.UUID]:
            return {k for (k,) in conn.execute(
                "SELECT unnest(pks) FROM sync.egress_change_set")}

        assert journal_keys() == set()
        assert conn.execute("SELECT count(*) FROM sync.egress_change_set "
                            "WHERE tablename <> 'contact'").fetchone()[0] == 0
        # a batch begins: the owner records what it is about to send (and only that)
        conn.execute("SELECT sync.egress_prepare(NULL, 'eu-west', false)")
        assert journal_keys() == {patient, swede}
        west.execute("UPDATE contact SET firstname = 'x'")
        west.execute("DELETE FROM contact WHERE contactid IN (%s, %s)", (swede, american))
        assert {r[0] for r in conn.execute("SELECT pk FROM sync.egress_tombstone")} == {swede}
        # the sent set is the owner's alone
        for forbidden in ("SELECT * FROM sync.egress_sent",
                          "SELECT * FROM sync.journal_since(NULL, NULL, NULL, false)",
                          "SELECT * FROM sync.egress_withdrawal",
                          "SELECT * FROM sync.erasure_log",
                          "SELECT * FROM sync.journal_horizon",
                          "INSERT INTO sync.egress_sent VALUES ('regionsync_to_us_east', "
                          "'contact', gen_random_uuid())",
                          "SELECT sync.egress_mark('regionsync_to_us_east', 'contact', NULL, NULL, "
                          "NULL, false)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
        assert journal_keys() == {patient, swede}
        assert conn.execute("SELECT tablename FROM sync.egress_grants").fetchall() == [
            ("contact",)]
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.change_log "
                               "WHERE tablename = 'medicalcase'") == 1
    # the owner's application is not limited by row-level security
    assert mesh.one("eu-west", "SELECT count(*) FROM contact") == 1
    # a narrower policy takes effect at once: the column grant is gone
    apply_egress(west, load_policy(_policy_dir(tmp_path, "narrow", """version: 1
rules:
  contact:
    columns: [address1_country]
"""), mesh.schema), mesh.schema, ["us-east"])
    with psycopg.connect(as_destination(mesh, "eu-west", "us-east"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT lastname FROM contact")
        assert conn.execute("SELECT count(*) FROM contact").fetchone()[0] == 1


def test_roles_command_prints_and_applies_the_grants(mesh: Mesh, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "west.yaml", "eu-west", mesh.urls["eu-west"],
                       {"eu-north": mesh.urls["eu-north"]}, policy_dir=POLICIES,
                       extra={"destinations": "[us-east]"})
    printed = cli("roles", "--config", str(cfg))
    assert printed.returncode == 0, printed.stderr
    assert 'CREATE ROLE "regionsync_to_eu_north" LOGIN' in printed.stdout
    assert 'CREATE ROLE "regionsync_to_us_east" LOGIN' in printed.stdout
    assert "medical" not in printed.stdout.replace("medicalcase", "")
    assert 'GRANT SELECT ("contactid"' in printed.stdout
    applied = cli("roles", "--config", str(cfg), "--apply")
    assert applied.returncode == 0, applied.stderr
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.egress_role") == 2
    with psycopg.connect(as_destination(mesh, "eu-west", "us-east")) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT medical_notes FROM contact")


def test_roles_sets_destination_passwords_as_scram_verifiers(mesh: Mesh,
                                                             tmp_path: Path) -> None:
    """`roles --apply --destination-password-env VAR`: the destination role logs in with
    the password over scram, and the password itself never reaches the server's log."""
    cluster = mesh.clusters["eu-west"]
    cfg = write_config(tmp_path / "west.yaml", "eu-west", mesh.urls["eu-west"], {},
                       extra={"destinations": "[us-east]"})
    secret = f"Pw-{uuid.uuid4().hex}"
    missing = cli("roles", "--config", str(cfg), "--apply",
                  "--destination-password-env", "RS_UNSET_VAR")
    assert missing.returncode != 0 and "RS_UNSET_VAR is not set" in missing.stderr
    offset = cluster.logfile.stat().st_size
    west = mesh.conn("eu-west")
    west.execute(f'ALTER DATABASE "{mesh.dbname}" SET log_statement = \'all\'')
    try:
        made = cli("roles", "--config", str(cfg), "--apply", "--destination-password-env",
                   "RS_DEST_PW", env={"RS_DEST_PW": secret})
    finally:
        west.execute(f'ALTER DATABASE "{mesh.dbname}" RESET log_statement')
    assert made.returncode == 0, made.stderr
    role = role_for("us-east")
    assert mesh.one("eu-west", "SELECT rolpassword LIKE 'SCRAM-SHA-256$4096:%%' FROM pg_authid "
                               "WHERE rolname = %s", (role,)) is True
    hba = cluster.data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
    west.execute("SELECT pg_reload_conf()")
    try:
        url = psycopg.conninfo.make_conninfo(mesh.urls["eu-west"], user=role, host="127.0.0.1")
        with psycopg.connect(url, password=secret) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(url, password="wrong").close()
    finally:
        hba.write_text(original)
        west.execute("SELECT pg_reload_conf()")
    assert secret not in cluster.logfile.read_bytes()[offset:].decode(errors="replace")


def test_daemons_run_with_the_generated_least_privilege_roles(mesh: Mesh,
                                                              tmp_path: Path) -> None:
    """The production path: the owner runs `roles --apply`; each daemon logs in as its own
    non-superuser, non-owner role and reads its peer as the role the peer made for it."""
    from sync.testing.cluster import free_port
    from tests.fix_daemons import start_daemon, stop_daemon, wait_for

    suffix = uuid.uuid4().hex[:6]
    regions = ("eu-west", "eu-north")
    daemon_role = {r: f"rs_{r.replace('-', '_')}_{suffix}" for r in regions}
    for r in regions:
        owner_cfg = write_config(tmp_path / f"{r}-owner.yaml", r, mesh.urls[r],
                                 {p: mesh.urls[p] for p in regions if p != r})
        made = cli("roles", "--config", str(owner_cfg), "--apply",
                   "--daemon-role", daemon_role[r])
        assert made.returncode == 0, made.stderr
    procs = {}
    try:
        for r in regions:
            peer = next(p for p in regions if p != r)
            own = write_config(tmp_path / f"{r}-daemon.yaml", r,
                               psycopg.conninfo.make_conninfo(mesh.urls[r],
                                                              user=daemon_role[r]), {})
            at_head = cli("migrate", "--config", str(own))   # as systemd's ExecStartPre does
            assert at_head.returncode == 0, at_head.stderr
            cfg = write_config(
                tmp_path / f"{r}.yaml", r,
                psycopg.conninfo.make_conninfo(mesh.urls[r], user=daemon_role[r]),
                {peer: as_destination(mesh, peer, r)}, free_port(), extra={"egress": "false"})
            procs[r] = start_daemon(cfg, tmp_path / f"{r}.log")
        _seed_owner(mesh)
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact "
                                              "WHERE lastname = 'Patient'") == 1, 60)
        back = contact(mesh.conn("eu-north"), "Reply")
        wait_for(lambda: mesh.one("eu-west", "SELECT count(*) FROM contact "
                                             "WHERE contactid = %s", (back,)) == 1, 60)
    finally:
        codes = {r: stop_daemon(p) for r, p in procs.items()}
    assert codes == {r: 0 for r in regions}
    assert not _holds_secret(mesh, "eu-north")
    for r in regions:
        log = (tmp_path / f"{r}.log").read_text()
        assert "stopped:" not in log and "Traceback" not in log, log
        assert mesh.one(r, "SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                        (daemon_role[r],)) is False


def test_a_row_that_leaves_the_owners_filter_is_withdrawn_within_one_poll(
        mesh: Mesh, tmp_path: Path) -> None:
    owner_policy = load_policy(_policy_dir(tmp_path, "owner", """version: 1
rules:
  contact:
    columns: [lastname, address1_country]
    rows: "address1_country in ('IE', 'SE')"
    to: [eu-north]
"""), mesh.schema)
    receiver_policy = load_policy(_policy_dir(tmp_path, "receiver", """version: 1
rules:
  contact:
    columns: [lastname, address1_country]
"""), mesh.schema)
    west = mesh.conn("eu-west")
    apply_egress(west, owner_policy, mesh.schema, ["eu-north"])
    moving, staying = contact(west, "Moving", country="IE"), contact(west, "Staying")
    link = new_link(region="eu-north", peer="eu-west",
                    peer_conninfo=as_destination(mesh, "eu-west", "eu-north"),
                    local_conninfo=mesh.urls["eu-north"], policy=lambda: receiver_policy)
    try:
        link.run_once()
        assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 2
        west.execute("UPDATE contact SET address1_country = 'US' WHERE contactid = %s",
                     (moving,))
        batch = link.run_once()                                  # one poll
        assert batch.applied.get(("contact", "withdraw")) == 1
    finally:
        link.close()
    north_keys = {r[0] for r in mesh.conn("eu-north").execute("SELECT contactid FROM contact")}
    assert north_keys == {staying}
    # not a business delete: the owner keeps its row, no tombstone anywhere, nothing to pull
    assert mesh.one("eu-west", "SELECT count(*) FROM contact WHERE contactid = %s",
                    (moving,)) == 1
    for region in ("eu-west", "eu-north"):
        assert mesh.one(region, "SELECT count(*) FROM sync.tombstone") == 0
    back = mesh.pull("eu-west", "eu-north")
    assert sum(b.rows for b in back) == 0
    assert mesh.one("eu-west", "SELECT address1_country FROM contact WHERE contactid = %s",
                    (moving,)) == "US"


def test_the_owner_records_what_it_served_and_reports_it(mesh: Mesh, tmp_path: Path,
                                                         shipped_policy) -> None:
    import json

    _seed_owner(mesh)
    west = mesh.conn("eu-west")
    apply_egress(west, shipped_policy, mesh.schema, ["eu-north"])
    receiver = [load_policy(_policy_dir(tmp_path, "narrow", OPEN), mesh.schema)]
    link = new_link(region="eu-north", peer="eu-west",
                    peer_conninfo=as_destination(mesh, "eu-west", "eu-north"),
                    local_conninfo=mesh.urls["eu-north"], policy=lambda: receiver[0])
    try:
        link.run_once()
        link.run_once()            # idle: nothing served, nothing recorded
        receiver[0] = shipped_policy
        link.run_once()            # wider: a backfill, on record like any batch
    finally:
        link.close()
    logged = west.execute("SELECT region, role_name, tables, policy_sha FROM sync.egress_log "
                          "ORDER BY id").fetchall()
    assert logged == [("eu-north", "regionsync_to_eu_north", {"contact": 1},
                       shipped_policy.sha)] * 2
    # a destination role cannot read the log (it writes only through record_egress, which
    # takes its role from the session, not from the caller)
    with psycopg.connect(as_destination(mesh, "eu-west", "eu-north"), autocommit=True) as c, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("SELECT * FROM sync.egress_log")
    cfg = write_config(tmp_path / "west.yaml", "eu-west", mesh.urls["eu-west"], {})
    report = cli("egress", "--config", str(cfg), "--to", "eu-north", "--format", "json")
    assert report.returncode == 0, report.stderr
    (entry,) = json.loads(report.stdout)
    assert (entry["to"], entry["table"], entry["rows"], entry["policy"]) == (
        "eu-north", "contact", 2, [shipped_policy.sha])
    # the columns served, by name, as the owner granted them — never a medical one
    (served,) = entry["columns"]
    assert "lastname" in served and "contactid" in served
    assert not {"medical_notes", "implant_serial", "versionnumber"} & set(served)
    csv = cli("egress", "--config", str(cfg), "--format", "csv")
    assert csv.stdout.splitlines()[0] == \
        "to,table,batches,rows,first,last,policy,columns_sha,columns"
    assert ",".join(served) in csv.stdout.splitlines()[1]
    text = cli("egress", "--config", str(cfg))
    assert "lastname" in text.stdout and text.returncode == 0


def _link(mesh: Mesh, policy: Policy) -> PeerLink:
    return new_link(region="eu-north", peer="eu-west",
                    peer_conninfo=as_destination(mesh, "eu-west", "eu-north"),
                    local_conninfo=mesh.urls["eu-north"], policy=lambda: policy)


def _north_keys(mesh: Mesh) -> set[uuid.UUID]:
    return {r[0] for r in mesh.conn("eu-north").execute("SELECT contactid FROM contact")}


OPEN = """version: 1
rules:
  contact:
    columns: [lastname, address1_country]
"""
FILTERED = OPEN + """    rows: "address1_country in ('IE', 'SE')"
"""


def test_an_owner_that_narrows_its_filter_withdraws_the_copies_within_one_poll(
        mesh: Mesh, tmp_path: Path) -> None:
    """Invariant 8 for a policy change, not a row change: no row was written, yet copies
    that the owner's new policy would not send must go."""
    west = mesh.conn("eu-west")
    receiver = load_policy(_policy_dir(tmp_path, "receiver", OPEN), mesh.schema)
    apply_egress(west, load_policy(_policy_dir(tmp_path, "open", OPEN), mesh.schema),
                 mesh.schema, ["eu-north"])
    irish, swede, american = (contact(west, "Irish", country="IE"),
                              contact(west, "Swede", country="SE"),
                              contact(west, "American", country="US"))
    link = _link(mesh, receiver)
    try:
        link.run_once()
        assert _north_keys(mesh) == {irish, swede, american}
        # sent whole, now filtered: the American must leave eu-north
        apply_egress(west, load_policy(_policy_dir(tmp_path, "eu", FILTERED), mesh.schema),
                     mesh.schema, ["eu-north"])
        batch = link.run_once()
        assert batch.applied.get(("contact", "withdraw")) == 1
        assert _north_keys(mesh) == {irish, swede}
        # narrowed again, to Ireland only
        apply_egress(west, load_policy(_policy_dir(tmp_path, "ie", FILTERED.replace(
            "'IE', 'SE'", "'IE'")), mesh.schema), mesh.schema, ["eu-north"])
        link.run_once()
        assert _north_keys(mesh) == {irish}
        link.run_once()
        link.run_once()
    finally:
        link.close()
    # no business delete: the owner keeps every row, and nothing was tombstoned
    assert mesh.one("eu-west", "SELECT count(*) FROM contact") == 3
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.tombstone") == 0
    # once applied, the withdrawals are forgotten at the owner
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.egress_withdrawal") == 0
    assert mesh.one("eu-west", "SELECT array_agg(pk) FROM sync.egress_sent") == [irish]


def test_a_withdrawn_row_is_never_heard_of_again_until_it_matches(mesh: Mesh,
                                                                  tmp_path: Path) -> None:
    """The key-level journal: after its withdrawal, a row outside the filter leaves no
    trace at the destination (key, time or transaction), until it matches again."""
    west = mesh.conn("eu-west")
    receiver = load_policy(_policy_dir(tmp_path, "receiver", OPEN), mesh.schema)
    apply_egress(west, load_policy(_policy_dir(tmp_path, "eu", FILTERED), mesh.schema),
                 mesh.schema, ["eu-north"])
    mover = contact(west, "Mover", country="IE")
    never = contact(west, "Never", country="US")
    link = _link(mesh, receiver)

    def visible_to_destination() -> set[uuid.UUID]:
        with psycopg.connect(as_destination(mesh, "eu-west", "eu-north")) as c:
            return {k for (k,) in c.execute("SELECT unnest(pks) FROM sync.egress_change_set")}

    try:
        link.run_once()
        assert _north_keys(mesh) == {mover}
        west.execute("UPDATE contact SET address1_country = 'US' WHERE contactid = %s", (mover,))
        assert link.run_once().applied.get(("contact", "withdraw")) == 1
        assert mover in visible_to_destination()
        # the next token the destination writes shows the owner that it applied the
        # withdrawal; from then on the key is not the destination's business
        other = contact(west, "Other", country="SE")
        link.run_once()
        link.run_once()
        assert visible_to_destination() == {other}
        for _ in range(3):
            west.execute("UPDATE contact SET lastname = lastname || '.' "
                         "WHERE contactid IN (%s, %s)", (mover, never))
        assert visible_to_destination() == {other}
        assert link.run_once().rows == 0
        # it matches again: it comes back
        west.execute("UPDATE contact SET address1_country = 'SE' WHERE contactid = %s", (mover,))
        link.run_once()
        assert _north_keys(mesh) == {mover, other}
        assert mesh.one("eu-north", "SELECT lastname FROM contact WHERE contactid = %s",
                        (mover,)) == "Mover..."
    finally:
        link.close()


def test_policy_drift_asks_the_owner_not_our_stale_copy(mesh: Mesh, tmp_path: Path) -> None:
    """A contact that moved from IE to the US while eu-north was not polling: its copy in
    eu-north still says IE, so our own filter finds nothing wrong. The owner no longer
    lets us read it, and that is what `policy drift` reports and `retract` acts on."""
    west = mesh.conn("eu-west")
    apply_egress(west, load_policy(_policy_dir(tmp_path, "eu", FILTERED), mesh.schema),
                 mesh.schema, ["eu-north"])
    stays, moves = contact(west, "Stays", country="IE"), contact(west, "Moves", country="IE")
    receiver = _policy_dir(tmp_path, "receiver", FILTERED)
    link = _link(mesh, load_policy(receiver, mesh.schema))
    try:
        link.run_once()
    finally:
        link.close()
    west.execute("UPDATE contact SET address1_country = 'US' WHERE contactid = %s", (moves,))
    cfg = write_config(tmp_path / "north.yaml", "eu-north", mesh.urls["eu-north"],
                       {"eu-west": as_destination(mesh, "eu-west", "eu-north")},
                       policy_dir=receiver)
    local = cli("policy", "drift", "--config", str(cfg), "--local-only")
    assert local.returncode == 0, local.stdout + local.stderr       # what we used to say
    drift = cli("policy", "drift", "--config", str(cfg))
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert ("contact from eu-west: 1 row(s): delete — eu-west no longer sends these rows "
            "to eu-north") in drift.stdout
    done = cli("retract", "--config", str(cfg))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _north_keys(mesh) == {stays}
    assert cli("policy", "drift", "--config", str(cfg)).returncode == 0
    # an owner that cannot be reached is named, and our own policy still applies
    gone = write_config(tmp_path / "north2.yaml", "eu-north", mesh.urls["eu-north"],
                        {"eu-west": "postgresql://nobody@127.0.0.1:1/x?connect_timeout=2"},
                        policy_dir=receiver)
    out = cli("policy", "drift", "--config", str(gone))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "note: eu-west unreachable" in out.stdout and "Traceback" not in out.stderr


def test_the_owner_caps_what_it_serves_each_destination(mesh: Mesh, tmp_path: Path,
                                                        shipped_policy) -> None:
    """serve.max_connections is the role's CONNECTION LIMIT; serve.max_rows_per_minute is
    answered with a retry-after once a destination's last minute reaches it."""
    from sync.config import ServeConfig
    from sync.errors import Throttled
    west = mesh.conn("eu-west")
    apply_egress(west, shipped_policy, mesh.schema, ["eu-north"],
                 ServeConfig(max_connections=2, max_rows_per_minute=5))
    assert mesh.one("eu-west", "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s",
                    (role_for("eu-north"),)) == 2
    for i in range(8):
        contact(west, f"Capped{i}")
    link = _link(mesh, shipped_policy)
    try:
        first = link.run_once()              # under the cap when it asked: served whole
        assert first.rows == 8
        contact(west, "Waits")
        with pytest.raises(Throttled) as caught:
            link.run_once()
        assert 50 < caught.value.retry_after <= 60
        assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 8
        # the window passes (here: the owner's log is a minute older), and it flows again
        west.execute("UPDATE sync.egress_log SET served_at = served_at - interval '61 s'")
        assert link.run_once().rows == 1
    finally:
        link.close()


def test_a_column_the_owner_stops_sending_is_cleared_abroad_within_one_poll(
        mesh: Mesh, tmp_path: Path) -> None:
    with_phone = OPEN.replace("[lastname, address1_country]",
                              "[lastname, address1_country, telephone1]")
    west = mesh.conn("eu-west")
    apply_egress(west, load_policy(_policy_dir(tmp_path, "phone", with_phone), mesh.schema),
                 mesh.schema, ["eu-north"])
    cid = contact(west, "Caller")
    west.execute("UPDATE contact SET telephone1 = '+353 1 234' WHERE contactid = %s", (cid,))
    link = _link(mesh, load_policy(_policy_dir(tmp_path, "receiver", with_phone), mesh.schema))
    try:
        link.run_once()
        assert mesh.one("eu-north", "SELECT telephone1 FROM contact") == "+353 1 234"
        # the owner narrows its grant; nothing is written at the owner
        apply_egress(west, load_policy(_policy_dir(tmp_path, "nophone", OPEN), mesh.schema),
                     mesh.schema, ["eu-north"])
        link.run_once()
        assert "telephone1" in link.refused["contact"]          # said once, per table
    finally:
        link.close()
    assert mesh.one("eu-north", "SELECT telephone1 FROM contact") is None
    assert mesh.one("eu-north", "SELECT lastname FROM contact") == "Caller"
    assert mesh.one("eu-west", "SELECT telephone1 FROM contact") == "+353 1 234"
    assert sum(b.rows for b in mesh.pull("eu-west", "eu-north")) == 0     # no echo


def test_a_hostile_filter_value_cannot_break_out_of_the_generated_function(
        mesh: Mesh, tmp_path: Path) -> None:
    """The owner compiles its filters into ``sync.egress_mark`` (SECURITY DEFINER); a value
    that closes quotes or dollar quotes stays a value."""
    evil = "a$$; DROP TABLE contact; --'$f$"
    pol = load_policy(_policy_dir(tmp_path, "evil", OPEN + '    rows: "lastname != \'' +
                                  evil.replace("'", "''") + '\'"\n'), mesh.schema)
    west = mesh.conn("eu-west")
    keep = contact(west, "Fine")
    contact(west, evil)
    apply_egress(west, pol, mesh.schema, ["eu-north"])
    link = _link(mesh, load_policy(_policy_dir(tmp_path, "receiver", OPEN), mesh.schema))
    try:
        link.run_once()
    finally:
        link.close()
    assert _north_keys(mesh) == {keep}
    assert mesh.one("eu-west", "SELECT count(*) FROM contact") == 2
    assert mesh.one("eu-west", "SELECT array_agg(pk) FROM sync.egress_sent") == [keep]
