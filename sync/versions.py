"""Column versions as numbers (migration 0021, protocol 3).

A version is one ``bigint``: the writer's hybrid-logical-clock time in microseconds since
2000-01-01 UTC (PostgreSQL's own ``TimestampTz``) shifted left 11 bits, or'ed with the
writer's **origin number** (1-2047). Integer order is the (time, origin number) order,
so one ``>`` or ``greatest()`` merges a column with the same tie-break in every region,
and a version costs 8 bytes and an integer comparison where its text form
(``2026-12-02T19:09:55.123456Z eu-west``, protocol 2) cost 35 and a collation-aware
one. Good until the year 2142.

Origin numbers must mean the same region everywhere, because versions travel through
regions that never talk to their writer (spokes through a hub). A region's number is
``origin_numbers[region]`` from its config, else a hash of its name; each database keeps
the numbers it knows in ``sync.origin`` (sync/db/origins.py), and the handshake refuses a
peer whose numbers disagree, naming both regions.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from psycopg import sql

ORIGIN_BITS = 11
MAX_ORIGIN = (1 << ORIGIN_BITS) - 1          # 2047; 0 is never a region's number
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)     # PostgreSQL's TimestampTz epoch


def default_number(region: str) -> int:
    """A region's number when its config names none: stable across releases and
    machines (CRC-32 of the name), 1-2047. Two names can share one; the databases refuse
    that (see sync/db/origins.py) and ``origin_numbers`` settles it."""
    return zlib.crc32(region.encode("utf-8")) % MAX_ORIGIN + 1


def encode(time: datetime, number: int) -> int:
    """The version of a write at ``time`` by the region numbered ``number``."""
    delta = time - EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (micros << ORIGIN_BITS) | number


def decode(version: int) -> tuple[datetime, int]:
    """(time, origin number) of a version."""
    return EPOCH + timedelta(microseconds=version >> ORIGIN_BITS), version & MAX_ORIGIN


def describe(version: int, names: Mapping[int, str]) -> str:
    """A version as people read it (and as protocol 2 wrote it): UTC time, then origin."""
    time, number = decode(version)
    return f"{time:%Y-%m-%dT%H:%M:%S.%fZ} {names.get(number, f'#{number}')}"


def time_sql(version: sql.Composable) -> sql.Composable:
    """SQL: a version's time (exact to the microsecond)."""
    return sql.SQL("(timestamptz '2000-01-01 00:00:00+00' + ({} >> 11) * interval "
                   "'1 microsecond')").format(version)


def number_sql(version: sql.Composable) -> sql.Composable:
    """SQL: a version's origin number."""
    return sql.SQL("({} & 2047)").format(version)


def name_sql(version: sql.Composable, names: Mapping[int, str]) -> sql.Composable:
    """SQL: a version's origin name, from ``names`` (a database's ``sync.origin``); a
    number it does not hold reads ``#<number>``. A ``CASE`` of literals, not a lookup:
    the owner's COPY evaluates it per row."""
    number = number_sql(version)
    if not names:
        return sql.SQL("('#' || {})").format(number)
    whens = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(sql.Literal(n), sql.Literal(r))
                              for n, r in sorted(names.items()))
    return sql.SQL("(CASE {} {} ELSE '#' || {} END)").format(number, whens, number)


def of_sql(time: sql.Composable, number: sql.Composable) -> sql.Composable:
    """SQL: the version of a write at ``time`` (timestamptz) by ``number``; what
    ``sync.version_of`` computes, inline."""
    return sql.SQL("((((extract(epoch FROM {}) * 1000000)::bigint - 946684800000000) << 11)"
                   " | {})").format(time, number)


__all__ = ["EPOCH", "MAX_ORIGIN", "ORIGIN_BITS", "decode", "default_number", "describe",
           "encode", "name_sql", "number_sql", "of_sql", "time_sql"]
