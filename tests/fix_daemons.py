"""Region configs and `regionsync run` processes for tests, as operators write and run them.

One place builds a ``region.yaml`` and starts, waits for and stops daemons, so a test says
what it needs (regions, peers, knobs) and nothing about file layout or process plumbing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sync.testing.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies" / "examples" / "shared-mesh"   # every region, same columns


def write_config(path: Path, region: str, url: str, peers: Mapping[str, str], port: int = 0,
                 *, policy_dir: Path = POLICIES, poll_interval: float = 0.2,
                 page_size: int = 5000, extra: Mapping[str, Any] | None = None,
                 database_extra: Mapping[str, str] | None = None) -> Path:
    """A region.yaml for ``region`` with ``peers`` (name -> URL); ``extra`` adds top-level
    keys, ``database_extra`` keys under ``database:`` (e.g. ``password_env``)."""
    lines = [f"region: {region}", "database:", f"  url: {url}"]
    lines += [f"  {k}: {v}" for k, v in (database_extra or {}).items()]
    lines.append("peers:")
    for name, purl in peers.items():
        lines += [f"  - name: {name}", f"    url: {purl}"]
    lines += [f"policy_dir: {policy_dir}", f"poll_interval: {poll_interval}",
              f"page_size: {page_size}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    lines += ["metrics:", "  host: 127.0.0.1", f"  port: {port}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def mesh_config(path: Path, urls: Mapping[str, str], region: str, port: int = 0,
                peer_urls: Mapping[str, str] | None = None, **kw: Any) -> Path:
    """A region.yaml for ``region`` pulling from every other region in ``urls`` (reached
    at ``peer_urls`` instead when given: a proxy in between, say)."""
    return write_config(path, region, urls[region],
                        {r: (peer_urls or urls)[r] for r in urls if r != region}, port, **kw)


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something true (returned); an OSError counts as not yet."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = pred()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def start_daemon(config: Path, log: Path, env: Mapping[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    """`regionsync run --config CONFIG`, output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sync.cli", "run", "--config",
                                 str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, wait; SIGKILL if it does not stop. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return proc.returncode


@contextmanager
def mesh_daemons(tmp_path: Path, urls: Mapping[str, str],
                 peer_urls: Mapping[str, str] | None = None, **config: Any
                 ) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """One daemon per region in ``urls``, each pulling from every other region; configs
    and logs are ``tmp_path/<region>.yaml`` and ``.log`` (to restart one)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for region in urls:
            cfg = mesh_config(tmp_path / f"{region}.yaml", urls, region, free_port(),
                              peer_urls, **config)
            procs[region] = start_daemon(cfg, tmp_path / f"{region}.log")
        yield procs
    finally:
        for proc in procs.values():
            stop_daemon(proc)
