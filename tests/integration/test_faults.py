"""The fault matrix: the convergence workload (three daemons, three writers, the
last-writer-wins oracle, the medical-leak check) with a fault injected while writes flow.

Each run must end with 0 lost, 0 resurrected, 0 unknown rows, 0 leaked medical notes and
every region identical; the stats line prints how long the mesh took to converge after
the writers stopped. CI runs each fault briefly; by hand, longer and harder:

    REGIONSYNC_FAULT_SECONDS=60 REGIONSYNC_FAULT_HOLD=30 pytest tests/integration/test_faults.py

| fault | how |
|---|---|
| peer hung | every process of us-east's cluster SIGSTOPped (TCP accepted, nothing answers) |
| peer down | us-east's cluster stopped (its application paused), then started |
| connections terminated | `pg_terminate_backend` of every regionsync session, repeatedly |
| daemon killed | `kill -9` of eu-north's daemon mid-batch, restarted |
| latency and cuts | every peer connection through a proxy adding latency, cut repeatedly |

Token expiry is in `test_retention.py`, a full disk in `test_disk_full.py`, the local
database down under a lone daemon in `test_errors.py`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.fix_daemons import start_daemon
from tests.fix_faults import TcpProxy, freeze
from tests.fix_pg import Mesh
from tests.integration.test_convergence_stress import REGIONS, FaultContext, run_stress

SECONDS = float(os.environ.get("REGIONSYNC_FAULT_SECONDS", "14"))
HOLD = float(os.environ.get("REGIONSYNC_FAULT_HOLD", "6"))    # how long a fault lasts
SEED = 20261129


def hung_peer(ctx: FaultContext) -> None:
    time.sleep(2)
    freeze(ctx.mesh.clusters["us-east"].data, HOLD)


def peer_down(ctx: FaultContext) -> None:
    time.sleep(2)
    writer = ctx.writers["us-east"]
    writer.pause.set()
    assert writer.idle.wait(30), "us-east's application did not pause"
    ctx.mesh.conn("us-east").close()
    cluster = ctx.mesh.clusters["us-east"]
    # What a commit acknowledged survives a crash on any server regionsync supports; the
    # suite's fast clusters run with synchronous_commit off, where an immediate stop loses
    # the last ~0.5 s of acknowledged commits and the oracle's premise with them. So the
    # victim is made durable first (a clean restart the daemons ride through; it stays so).
    if cluster.settings.get("synchronous_commit") != "on":
        cluster.settings["synchronous_commit"] = "on"
        cluster.stop("fast")
        cluster.restart()
    cluster.stop("immediate")           # as a crash or a power cut would
    time.sleep(HOLD)
    cluster.restart()
    writer.pause.clear()


def terminate_sessions(ctx: FaultContext) -> None:
    end = time.monotonic() + HOLD + 2
    killed = 0
    while time.monotonic() < end:
        time.sleep(1.0)
        for region in REGIONS:
            with psycopg.connect(ctx.mesh.urls[region], autocommit=True) as c:
                killed += c.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                    "pg_stat_activity WHERE application_name LIKE 'regionsync-%' "
                    "AND pid <> pg_backend_pid()").fetchone()[0]
    assert killed > 0, "no regionsync session was there to terminate"


def kill_daemon(ctx: FaultContext) -> None:
    time.sleep(3)
    proc = ctx.daemons["eu-north"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(2)
    ctx.daemons["eu-north"] = start_daemon(ctx.tmp_path / "eu-north.yaml",
                                           ctx.tmp_path / "eu-north.log")


FAULTS: dict[str, Callable[[FaultContext], None]] = {
    "peer hung": hung_peer, "peer down": peer_down,
    "connections terminated": terminate_sessions, "daemon killed": kill_daemon}


@pytest.mark.parametrize("name", list(FAULTS))
def test_faults_leave_nothing_lost_resurrected_or_leaked(mesh: Mesh, tmp_path: Path,
                                                         name: str) -> None:
    stats = run_stress(mesh, tmp_path, SEED, SECONDS, fault=FAULTS[name])
    print(f"fault {name!r}: converged {stats['converged_s_after_writes']} s after the writes")


def test_latency_and_cut_connections(mesh: Mesh, tmp_path: Path) -> None:
    proxies = {r: TcpProxy(mesh.clusters[r].port, latency=0.02) for r in REGIONS}
    urls = {r: mesh.urls[r].replace(f":{mesh.clusters[r].port}/", f":{p.port}/")
            for r, p in proxies.items()}
    assert all(urls[r] != mesh.urls[r] for r in REGIONS)
    cuts = []

    def cut_repeatedly(ctx: FaultContext) -> None:
        end = time.monotonic() + HOLD + 2
        while time.monotonic() < end:
            time.sleep(1.5)
            cuts.append(sum(p.cut() for p in proxies.values()))

    try:
        run_stress(mesh, tmp_path, SEED, SECONDS, fault=cut_repeatedly, peer_urls=urls)
    finally:
        for p in proxies.values():
            p.close()
    assert sum(cuts) > 0, "the proxies never carried a connection to cut"
