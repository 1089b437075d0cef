"""The target's disk fills up mid-load: nothing is lost, the token stays, and the daemon
carries on by itself once space is freed.

eu-north's `contact` table (and its indexes) is moved to a tablespace on a tmpfs of a few
megabytes; eu-west holds more contacts than fit. PostgreSQL answers ENOSPC with 53100
(disk_full): a transient error for regionsync, which backs off and retries. Then the
tmpfs is made larger, as an operator freeing space would.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from sync.testing.cluster import free_port
from tests.fix_daemons import start_daemon, stop_daemon, wait_for, write_config
from tests.fix_pg import Mesh
from tests.integration.test_daemon import get

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (runs as root in CI)")


def test_a_full_disk_loses_nothing_and_recovers_when_space_is_freed(mesh: Mesh,
                                                                    tmp_path: Path) -> None:
    mount = Path(tempfile.mkdtemp(prefix="rs-diskfull-"))   # the postgres user reaches it
    mount.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    north = mesh.conn("eu-north")
    space = f"small_{mesh.dbname}"
    proc = None
    try:
        pw = pwd.getpwnam("postgres")
        os.chown(mount, pw.pw_uid, pw.pw_gid)
        north.execute(f"CREATE TABLESPACE {space} LOCATION '{mount}'")
        north.execute(f"ALTER TABLE contact SET TABLESPACE {space}")
        north.execute(f"ALTER INDEX ALL IN TABLESPACE pg_default SET TABLESPACE {space}")
        west = mesh.conn("eu-west")
        west.execute("""INSERT INTO contact (firstname, lastname, emailaddress1,
                        address1_country, telephone1)
                        SELECT 'F' || i, repeat('L', 200) || i, 'e' || i || '@x.org', 'IE',
                               repeat('9', 40) FROM generate_series(1, 30000) i""")
        port = free_port()
        cfg = write_config(tmp_path / "north.yaml", "eu-north", mesh.urls["eu-north"],
                           {"eu-west": mesh.urls["eu-west"]}, port, poll_interval=0.2,
                           page_size=2000)
        proc = start_daemon(cfg, tmp_path / "north.log")

        def last_error() -> str:
            peer = json.loads(get(port, "/status")[1])["peers"]["eu-west"]
            return peer.get("last_error") or ""    # absent while the link is starting

        wait_for(lambda: "53100" in last_error(), 90, "the disk to fill")
        held = mesh.one("eu-north", "SELECT count(*) FROM contact")
        assert held < 30000
        # the token did not move past what is not stored
        assert mesh.one("eu-north", "SELECT count(*) FROM sync.peer_state "
                                    "WHERE peer = 'eu-west'") == 0
        assert proc.poll() is None                     # the daemon waits, it does not die
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact") == 30000, 120,
                 "recovery after space was freed")
        # a batch of several pages commits its token alone, just after its last page
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM sync.peer_state "
                                              "WHERE peer = 'eu-west'") == 1, 10,
                 "the token after the last page")
        assert mesh.one("eu-north", "SELECT count(*) FROM sync.dead_letter") == 0
    finally:
        if proc is not None:
            stop_daemon(proc)
        with contextlib.suppress(psycopg.Error):
            north.execute("ALTER TABLE contact SET TABLESPACE pg_default")
            north.execute(f"ALTER INDEX ALL IN TABLESPACE {space} SET TABLESPACE pg_default")
        north.execute(f"DROP TABLESPACE IF EXISTS {space}")
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()
    log = (tmp_path / "north.log").read_text()
    assert "Traceback" not in log
