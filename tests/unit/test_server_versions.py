"""Which PostgreSQL majors `migrate` accepts: 15 to 18, the ones CI runs on and between."""

from __future__ import annotations

import logging

import pytest

from sync.db.migrate import check_server_version
from sync.errors import SchemaError


def test_an_older_server_is_refused_in_one_line() -> None:
    with pytest.raises(SchemaError) as err:
        check_server_version(140012)
    assert str(err.value) == ("this database runs PostgreSQL 14; regionsync needs PostgreSQL "
                              "15 to 18: upgrade the server (pg_upgrade) first")


@pytest.mark.parametrize("version", [150018, 160010, 170006, 180006])
def test_supported_majors_pass_quietly(version: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_server_version(version)
    assert caplog.records == []


def test_a_newer_untested_major_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_server_version(190001)
    assert "PostgreSQL 19 is newer than the majors regionsync is tested on" in caplog.text
