"""What a reload does, decided from the running and the loaded config alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import load_config
from sync.errors import ConfigError
from sync.runtime.reload import plan_reload


def _config(tmp_path: Path, name: str, body: str):
    path = tmp_path / name
    path.write_text("database:\n  url: postgresql://rs@127.0.0.1:5432/crm\n" + body)
    return load_config(path)


PEERS = """region: eu-west
peers:
  - name: eu-north
    url: postgresql://to@127.0.0.1:5433/crm
  - name: us-east
    url: postgresql://to@127.0.0.1:5434/crm
"""


def test_only_the_links_whose_settings_differ_restart(tmp_path: Path) -> None:
    running = _config(tmp_path, "a.yaml", PEERS)
    loaded = _config(tmp_path, "b.yaml", PEERS.replace("5434", "6434") + """\
  - name: ap-south
    url: postgresql://to@127.0.0.1:5435/crm
metrics:
  port: 9999
""")
    plan = plan_reload(running, loaded)
    assert (plan.added, plan.removed, plan.changed, plan.kept) == (
        ("ap-south",), (), ("us-east",), ("eu-north",))
    assert plan.at_restart == ("metrics",)
    assert plan.effective.metrics == running.metrics      # kept until a restart
    assert plan.summary() == "added ap-south; restarted us-east; kept eu-north"


def test_a_setting_every_link_uses_restarts_them_all_and_a_removed_peer_stops(
        tmp_path: Path) -> None:
    running = _config(tmp_path, "a.yaml", PEERS)
    loaded = _config(tmp_path, "b.yaml", PEERS.split("  - name: us-east")[0]
                     + "page_size: 100\n")
    plan = plan_reload(running, loaded)
    assert (plan.removed, plan.changed, plan.kept) == (("us-east",), ("eu-north",), ())


def test_a_file_for_another_region_is_refused(tmp_path: Path) -> None:
    running = _config(tmp_path, "a.yaml", PEERS)
    other = _config(tmp_path, "b.yaml", PEERS.replace("region: eu-west", "region: eu-south"))
    with pytest.raises(ConfigError, match="region is 'eu-south' in the file but this daemon "
                                          "runs 'eu-west'"):
        plan_reload(running, other)
