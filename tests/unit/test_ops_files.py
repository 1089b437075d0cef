"""ops/ and docker/ stay true to what the daemon exports and what the CLI accepts."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import click
import psycopg.conninfo
import pytest
from ruamel.yaml import YAML

from sync.cli import main
from sync.config import load_config
from sync.runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
NAME = re.compile(r"\bregionsync_[a-z_]+")


def exported_names() -> set[str]:
    """Every sample name the daemon's registry can expose."""
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_dashboard_and_alerts_only_use_exported_metric_names() -> None:
    exported = exported_names()
    dashboard = json.loads((OPS / "grafana" / "regionsync.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = YAML(typ="safe").load((OPS / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {n for e in exprs for n in NAME.findall(e)}
    assert used, "no regionsync metric found in the dashboard or the rules"
    assert used <= exported, f"not exported by the daemon: {sorted(used - exported)}"
    # and the dashboard shows every family an operator needs
    for needed in ("regionsync_lag_seconds", "regionsync_backlog_changes",
                   "regionsync_changes_applied_total", "regionsync_changes_filtered_total",
                   "regionsync_conflicts_total", "regionsync_dead_letters",
                   "regionsync_poll_duration_seconds_bucket",
                   "regionsync_apply_duration_seconds_bucket", "regionsync_policy_info",
                   "regionsync_leader"):
        assert any(needed in e for e in exprs), needed


def test_every_alert_has_a_promtool_unit_test() -> None:
    rules = YAML(typ="safe").load((OPS / "prometheus" / "alerts.yml").read_text())
    tests = YAML(typ="safe").load((OPS / "prometheus" / "alerts.test.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"]
              if a["exp_alerts"]}
    assert alerts == tested


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's `prometheus` package (.ci/run does)"
    return path


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts.test.yml"],
                                  ["check", "config", "prometheus.yml"]])
def test_promtool(args: list[str], tmp_path: Path) -> None:
    # a copy, beside a token file as the deployment has (the scrape config names it)
    shutil.copytree(OPS / "prometheus", tmp_path / "prometheus")
    (tmp_path / "prometheus" / "metrics_token").write_text("t0ken\n")
    proc = subprocess.run([promtool(), *args], cwd=tmp_path / "prometheus",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def check_cli(argv: list[str]) -> None:
    """Parse a command line the way `regionsync` would, without running it."""
    ctx = main.make_context("regionsync", list(argv), resilient_parsing=False)
    with warnings.catch_warnings():   # click 8.2 deprecates protected_args (merged in 9)
        warnings.simplefilter("ignore", DeprecationWarning)
        name, *rest = [*ctx.protected_args, *ctx.args]
    sub = main.get_command(ctx, name)
    assert sub is not None, f"unknown command {name!r} in {argv}"
    assert isinstance(sub, click.Command)
    sub.make_context(name, rest, parent=ctx)


def test_compose_file_matches_the_cli_the_configs_and_prometheus(monkeypatch,
                                                                 tmp_path: Path) -> None:
    compose = YAML(typ="safe").load((ROOT / "docker" / "compose.yml").read_text())
    services = compose["services"]
    regions = ["eu-west", "eu-north", "us-east"]
    entry = ["--log-format", "json"]       # the Dockerfile's ENTRYPOINT after `regionsync`
    for r in regions:
        assert services[f"pg-{r}"]["image"].startswith("regionsync-postgres:18")
        for kind in ("migrate", "regionsync"):
            svc = services[f"{kind}-{r}"]
            assert svc["image"] == "regionsync:latest"
            assert svc["build"]["dockerfile"] == "docker/Dockerfile"
            check_cli(entry + svc["command"])
            mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
            cfg_src = (ROOT / "docker" / mounts["/etc/regionsync/region.yaml"]).resolve()
            assert cfg_src.is_file()
            assert (ROOT / "docker" / mounts["/etc/regionsync/policies"]).resolve().is_dir()
            for name in svc["environment"]:   # the secrets compose gives the container
                monkeypatch.setenv(name, "from-compose")
            # the token is the compose secret; read here from a stand-in file
            text = cfg_src.read_text()
            assert "token_file: /run/secrets/metrics_token" in text
            (tmp_path / "token").write_text("t0ken\n")
            (tmp_path / f"{r}.yaml").write_text(
                text.replace("/run/secrets/metrics_token", str(tmp_path / "token")))
            cfg = load_config(tmp_path / f"{r}.yaml")
            assert cfg.region == r and cfg.metrics.port == 9187
            assert {p.name for p in cfg.peers} == set(regions) - {r}
            # peers are read as the role each made for us, with certificate checks
            for peer in cfg.peers:
                info = psycopg.conninfo.conninfo_to_dict(peer.conninfo(where="peer"))
                assert info["user"] == "regionsync_to_" + r.replace("-", "_")
                assert info["sslmode"] == "verify-full" and info["sslrootcert"]
        daemon = services[f"regionsync-{r}"]
        assert any(p.endswith(":9187") for p in daemon["ports"])
        assert daemon["secrets"] == ["metrics_token"]
        assert daemon["depends_on"][f"roles-{r}"]["condition"] == \
            "service_completed_successfully"
        roles = services[f"roles-{r}"]
        check_cli(entry + roles["command"])
        assert "--destination-password-env" in roles["command"]
        assert roles["depends_on"][f"migrate-{r}"]["condition"] == \
            "service_completed_successfully"
    # nothing is published beyond the host's loopback
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert compose["secrets"]["metrics_token"] == {"environment": "REGIONSYNC_METRICS_TOKEN"}
    prom = services["prometheus"]
    for v in prom["volumes"]:
        assert (ROOT / "docker" / v.split(":")[0]).resolve().is_file(), v
    scrape = YAML(typ="safe").load((OPS / "prometheus" / "prometheus.yml").read_text())
    targets = {t for c in scrape["scrape_configs"] for s in c["static_configs"]
               for t in s["targets"]}
    assert targets == {f"regionsync-{r}:9187" for r in regions}
    (job,) = scrape["scrape_configs"]
    assert job["authorization"]["credentials_file"] == "metrics_token"
    assert {"source": "metrics_token", "target": "/etc/prometheus/metrics_token"} in \
        prom["secrets"]
    assert "alerts.yml" in scrape["rule_files"]
    graf = services["grafana"]
    assert any(v.startswith("../ops/grafana/regionsync.json") for v in graf["volumes"])


def test_compose_databases_carry_the_c_capture_triggers() -> None:
    """The region configs require the C path (`capture: c`), so every database service
    must be built from the image that installs the extension, from the repository's own
    source."""
    compose = YAML(typ="safe").load((ROOT / "docker" / "compose.yml").read_text())
    databases = {k: v for k, v in compose["services"].items() if k.startswith("pg-")}
    assert len(databases) == 3
    for svc in databases.values():
        assert svc["build"]["dockerfile"] == "docker/postgres.Dockerfile"
    text = (ROOT / "docker" / "postgres.Dockerfile").read_text()
    assert "COPY ext/regionsync_capture" in text and "make -C /ext install" in text
    # a current major, the extension built against that same major's headers, and the
    # volume where PostgreSQL 18's image keeps its data (/var/lib/postgresql/18/docker)
    assert set(re.findall(r"^FROM postgres:(\d+)", text, re.M)) == {"18"}
    assert "postgresql-server-dev-18" in text
    for svc in databases.values():
        assert any(v.endswith(":/var/lib/postgresql") for v in svc["volumes"]), svc["volumes"]
    for config in (ROOT / "docker" / "config").glob("*.yaml"):
        assert YAML(typ="safe").load(config.read_text())["capture"] == "c", config


def test_dockerfile_is_slim_non_root_with_healthcheck() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1\d-slim", text, re.M)
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entry[0] == "regionsync"
    check_cli(entry[1:] + cmd)
    assert re.search(r"^RUN pip install \.", text, re.M)


def test_systemd_unit_is_hardened_and_runs_the_cli() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(OPS / "systemd" / "regionsync@.service")
    svc = unit["Service"]
    assert svc["User"] not in ("root", "0")
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["Restart"] == "on-failure"
    assert svc["KillSignal"] == "SIGTERM"
    assert int(svc["TimeoutStopSec"]) >= 60
    for key in ("ExecStart", "ExecStartPre"):
        argv = shlex.split(svc[key].replace("%i", "eu-west"))
        assert argv[0].endswith("/regionsync")
        check_cli(argv[1:])


def test_the_compose_certificates_pass_a_hostname_check(tmp_path: Path) -> None:
    """docker/make-certs.sh (the compose `certs` step): each server's certificate verifies
    against the CA for its own host name, and for no other (what verify-full checks)."""
    out = tmp_path / "certs"
    subprocess.run(["sh", str(ROOT / "docker" / "make-certs.sh"), str(out), "pg-eu-west",
                    "pg-us-east"], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "CERT_OWNER": f"{os.getuid()}:{os.getgid()}"})
    def verify(host: str, cert: str) -> int:
        return subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"),
                               "-verify_hostname", host, str(out / cert)],
                              capture_output=True, timeout=60).returncode
    assert verify("pg-eu-west", "pg-eu-west.crt") == 0
    assert verify("pg-us-east", "pg-us-east.crt") == 0
    assert verify("pg-eu-north", "pg-eu-west.crt") != 0
    assert not (out / "ca.key").exists()              # nothing more can be signed
    assert (out / "pg-eu-west.key").stat().st_mode & 0o077 == 0
