"""When a page's bulk statement fails: row by row, and the rows that fail on their own go to
``sync.dead_letter`` while the rest of the page commits (invariant 6).

A foreign-key or unique violation is marked retryable (in a mesh a parent authored
elsewhere can arrive a moment later); a value our types cannot hold is not. Never a row
value in the log or the error text: table, key, SQLSTATE and constraint only.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from sync.db import dead_letters
from sync.db.catalog import TableInfo
from sync.errors import describe
from sync.records import PageResult, Segment
from sync.wire import copy_in

log = logging.getLogger(__name__)

RETRYABLE_SQLSTATES = {"23503", "23505"}  # foreign_key_violation, unique_violation


class RowFallback:
    """Row-by-row application and dead letters for one applier's connection."""

    def __init__(self, conn: psycopg.Connection, *, peer: str) -> None:
        self.conn = conn
        self.peer = peer

    def stage_alone(self, name: sql.Identifier, info: TableInfo, seg: Segment,
                    result: PageResult) -> None:
        """Stage a text segment row by row; a row our types cannot hold (a value out of
        range, say) is dead-lettered by key and the rest go on."""
        key_col = info.pk if seg.kind == "upsert" else "pk"
        at = seg.columns.index(key_col)
        for line in seg.data.split(b"\n"):   # COPY text: one row a line, newlines escaped
            if not line:
                continue
            one = Segment(seg.table, seg.kind, seg.columns, line + b"\n", 1, False, seg.groups)
            try:
                with self.conn.transaction():
                    copy_in(self.conn, name, one)
            except psycopg.errors.DataError as exc:
                key = line.split(b"\t")[at].decode()
                self.dead_letter(info, None, key_col, key, seg.kind, exc)
                result.dead_letters[info.name] += 1

    def bulk_or_rows(self, info: TableInfo, stage: sql.Identifier, kind: str, bulk: Any,
                     one_row: Any, result: PageResult) -> None:
        """Try the whole segment; if it fails, apply row by row and dead-letter the failures."""
        try:
            with self.conn.transaction():
                bulk()
            return
        except psycopg.errors.IntegrityError as exc:
            log.info("peer %s: bulk %s of %s failed (%s); applying row by row", self.peer, kind,
                     info.name, exc.sqlstate)
        key_col = "pk" if kind == "delete" else info.pk
        keys = [r[0] for r in self.conn.execute(
            sql.SQL("SELECT {} FROM {}").format(sql.Identifier(key_col), stage)).fetchall()]
        for key in keys:
            try:
                with self.conn.transaction():
                    one_row(key)
            except psycopg.errors.IntegrityError as exc:
                self.dead_letter(info, stage, key_col, key, kind, exc)
                result.dead_letters[info.name] += 1

    def dead_letter(self, info: TableInfo, stage: sql.Identifier | None, key_col: str,
                     key: Any, kind: str, exc: psycopg.Error) -> None:
        diag = exc.diag
        # the server's DETAIL and a data error's message quote values: never in error text
        error = describe(exc)
        if diag.constraint_name:
            error += f" on {diag.constraint_name}"
        if diag.column_name:
            error += f" in column {diag.column_name}"
        row = None if stage is None else self.conn.execute(
            sql.SQL("SELECT to_jsonb(s) FROM {} s WHERE {} = %s").format(
                stage, sql.Identifier(key_col)), (key,)).fetchone()
        dead_letters.put_dead_letter(self.conn, self.peer, info.name, key, op=kind,
                              row=row[0] if row else None, error=error,
                              sqlstate=exc.sqlstate,
                              retryable=exc.sqlstate in RETRYABLE_SQLSTATES)
        # Never row values in logs: table, key and constraint only.
        log.warning("peer %s: %s of %s %s dead-lettered (%s %s)", self.peer, kind, info.name,
                    key, exc.sqlstate, diag.constraint_name or "")
