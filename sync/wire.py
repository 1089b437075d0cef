"""The COPY wire format shared by the source (which reads pages) and apply (which stages
them): which tables travel in binary, binary framing, the columns of a delete, and
COPYing a segment in."""

from __future__ import annotations

import psycopg
from psycopg import sql

from sync.db.catalog import LOCAL_ONLY_COLUMNS, Schema
from sync.records import Segment, SegmentKind

DELETE_COLUMNS = ("pk", "modifiedon", "origin")
WITHDRAW_COLUMNS = ("pk",)
BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
BINARY_HEADER = BINARY_SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # flags, no ext.
BINARY_TRAILER = b"\xff\xff"


def strip_binary_header(message: bytes) -> bytes:
    """The server sends the binary COPY header in front of the first row's message."""
    if not message.startswith(BINARY_SIGNATURE):
        raise ValueError("binary COPY from the peer did not start with the PGCOPY signature")
    extension = int.from_bytes(message[15:19], "big")
    return message[19 + extension:]


def is_trailer(message: bytes | memoryview) -> bool:
    """The binary COPY trailer: the stream's last message (a row message is never these
    two bytes: it starts with its column count)."""
    return len(message) == 2 and bytes(message) == BINARY_TRAILER


def binary_tables(ours: Schema, theirs: Schema) -> frozenset[str]:
    """Tables whose columns have the same built-in types here and at the peer: safe to
    move in binary COPY format (user-defined types carry database-local OIDs)."""
    same = set()
    for name, info in ours.tables.items():
        peer = theirs.tables.get(name)
        if peer is not None and all(
                peer.types.get(c) == info.types[c] and c in info.builtin and c in peer.builtin
                for c in info.columns if c not in LOCAL_ONLY_COLUMNS):
            same.add(name)
    return frozenset(same)


def ident_list(cols: tuple[str, ...], alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, c) if alias else sql.Identifier(c)
                              for c in cols)


def copy_in(conn: psycopg.Connection, table: sql.Composable, seg: Segment) -> None:
    """COPY a segment's rows into ``table``, in the format the peer sent them."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        table, ident_list(seg.columns), sql.SQL(" (FORMAT binary)" if seg.binary else ""))
    with conn.cursor().copy(stmt) as copy:
        if seg.binary:
            copy.write(BINARY_HEADER)
        copy.write(seg.data)
        if seg.binary:
            copy.write(BINARY_TRAILER)


def segment_of(table: str, kind: SegmentKind, columns: tuple[str, ...], buf: bytearray,
               rows: int, binary: bool, ends_stream: bool,
               groups: tuple[tuple[str, ...], ...] = (), narrow: bool = False) -> Segment:
    """A segment of the rows in ``buf``; when the stream's last message (the binary
    trailer) is in it, that message is not a row."""
    if ends_stream:
        return Segment(table, kind, columns, bytes(buf[:-2]), rows - 1, binary, groups,
                       narrow)
    return Segment(table, kind, columns, bytes(buf), rows, binary, groups, narrow)
