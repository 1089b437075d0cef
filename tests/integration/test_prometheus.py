"""A real Prometheus scraping real daemons that sync real PostgreSQL regions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from sync.testing.cluster import free_port
from tests.fix_daemons import mesh_config, wait_for
from tests.fix_daemons import start_daemon as run_daemon
from tests.fix_pg import Mesh
from tests.integration.helpers import contact

ROOT = Path(__file__).resolve().parents[2]


def prom_query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


def prom_alerts(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as r:
        return json.loads(r.read())["data"]["alerts"]


def start_daemon(tmp_path: Path, mesh: Mesh, region: str, port: int) -> subprocess.Popen:
    urls = {r: mesh.urls[r] for r in ("eu-west", "eu-north", "us-east")}
    cfg = mesh_config(tmp_path / f"{region}.yaml", urls, region, port, poll_interval=0.5,
                      extra={"breaker": "{failures: 5, open_seconds: 3}"})
    return run_daemon(cfg, tmp_path / f"{region}.log")


def test_prometheus_sees_lag_rise_while_a_peer_is_down_and_alerts(mesh: Mesh,
                                                                  tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not found: install Debian's `prometheus` package"
    ports = {r: free_port() for r in ("eu-north", "us-east")}
    daemons = {r: start_daemon(tmp_path, mesh, r, p) for r, p in ports.items()}
    # the shipped rules, with the threshold and wait shortened to fit a test
    rules = (ROOT / "ops" / "prometheus" / "alerts.yml").read_text()
    rules = rules.replace("(regionsync_lag_seconds) > 60\n        for: 5m",
                          "(regionsync_lag_seconds) > 3\n        for: 2s")
    assert "> 3\n        for: 2s" in rules
    (tmp_path / "alerts.yml").write_text(rules)
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [alerts.yml]\n"
        "scrape_configs:\n  - job_name: regionsync\n    static_configs:\n"
        + "".join(f"      - targets: ['127.0.0.1:{p}']\n        labels: {{region: {r}}}\n"
                  for r, p in ports.items()))
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    west = mesh.clusters["eu-west"]
    try:
        contact(mesh.conn("eu-west"), "Scraped")
        wait_for(lambda: mesh.one("us-east", "SELECT count(*) FROM contact") == 1, 30, "sync")
        lag = 'regionsync_lag_seconds{source="eu-west"}'
        wait_for(lambda: len(prom_query(prom_port, lag)) == 2, 30, "both daemons scraped")
        wait_for(lambda: all(float(s["value"][1]) < 3 for s in prom_query(prom_port, lag)),
                 30, "lag near 0 while healthy")
        # promtool on a real scrape
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['eu-north']}/metrics") as r:
            scrape = r.read()
        check = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=scrape,
                               capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        west.stop("fast")                         # the peer's database goes away
        wait_for(lambda: all(float(s["value"][1]) > 5 for s in prom_query(prom_port, lag)),
                 60, "lag to rise while eu-west is down")
        unreachable = prom_query(prom_port, 'regionsync_peer_reachable{peer="eu-west"}')
        assert unreachable and all(s["value"][1] == "0" for s in unreachable)
        states = wait_for(lambda: {a["state"] for a in prom_alerts(prom_port)
                                   if a["labels"]["alertname"] == "RegionsyncLagHigh"
                                   and a["labels"].get("source") == "eu-west"},
                          30, "the lag alert")
        assert states & {"pending", "firing"}
        wait_for(lambda: any(a["state"] == "firing" for a in prom_alerts(prom_port)
                             if a["labels"]["alertname"] == "RegionsyncLagHigh"), 30, "firing")
        west.restart()
        contact(mesh.new_conn("eu-west"), "AfterRestart")
        wait_for(lambda: all(float(s["value"][1]) < 3 for s in prom_query(prom_port, lag)),
                 90, "lag back to ~0 after eu-west restarts")
        assert mesh.one("us-east", "SELECT count(*) FROM contact") == 2
    finally:
        if not (west.data / "postmaster.pid").exists():
            west.restart()
        prom.send_signal(signal.SIGTERM)
        prom.wait(30)
        for d in daemons.values():
            d.send_signal(signal.SIGTERM)
        for d in daemons.values():
            assert d.wait(60) == 0
    assert os.path.exists(tmp_path / "tsdb")
