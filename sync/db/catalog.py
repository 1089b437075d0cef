"""What a region database looks like: tracked tables, their columns, keys and foreign keys.

Read from the live catalog (never hard-coded) so the policy can be checked against the
real schema and the apply order follows the real foreign keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

import psycopg

from sync.errors import SchemaError

# Columns every tracked table has. versionnumber is assigned by each region's own
# sequence and never travels; the other three travel with every row.
SYSTEM_COLUMNS = ("createdon", "modifiedon", "sync_origin")
LOCAL_ONLY_COLUMNS = ("versionnumber",)
# Per-column versions (migration 0018): "<column>__v" for each data column, the row's base
# version, and the mask of the columns its last write changed. They are not data columns:
# a policy never names them; the versions of the columns a rule sends travel with them.
VERSION_SUFFIX = "__v"
BASE_COLUMN = "sync_base"
CHANGED_COLUMN = "sync_changed"


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    parent: str


@dataclass(frozen=True)
class AlternateKey:
    """A unique constraint (or unique index) besides the primary key: Dataverse's alternate
    key, such as an account number. ``name`` is the index's, as errors name it."""
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    name: str
    pk: str
    columns: tuple[str, ...]          # in table order
    types: dict[str, str] = field(hash=False, compare=False)
    foreign_keys: tuple[ForeignKey, ...] = ()
    not_null: frozenset[str] = frozenset()
    builtin: frozenset[str] = frozenset()   # columns of built-in types (same OIDs everywhere)
    # data columns with a version column, and every column's attnum (the journal's masks)
    versioned: tuple[str, ...] = ()
    attnums: dict[str, int] = field(default_factory=dict, hash=False, compare=False)
    alternate_keys: tuple[AlternateKey, ...] = ()

    @property
    def per_column(self) -> bool:
        """Whether the table has per-column versions (migrated to 0018)."""
        return bool(self.versioned)

    def bit(self, column: str) -> int:
        """The column's bit in ``sync_changed`` masks (as the capture triggers set it)."""
        bit = 1 << min(self.attnums[column] - 1, 63)
        return bit - (1 << 64) if bit >= 1 << 63 else bit

    @property
    def parents(self) -> frozenset[str]:
        return frozenset(fk.parent for fk in self.foreign_keys if fk.parent != self.name)


@dataclass(frozen=True)
class Schema:
    tables: dict[str, TableInfo]

    def topo_order(self, names: list[str] | None = None,
                   priority: Mapping[str, int] | None = None) -> list[str]:
        """Parents before children (the order for upserts; reverse it for deletes); among
        the tables ready at each step, higher ``priority`` first, then by name. A table
        counts with the highest priority of its descendants, so that the way to a
        high-priority table is cleared first."""
        wanted = set(names if names is not None else self.tables)
        graph = {t: {p for p in self.tables[t].parents if p in wanted} for t in sorted(wanted)}
        sorter = TopologicalSorter(graph)
        try:
            sorter.prepare()
        except CycleError as exc:  # deferrable FKs make a cycle workable; keep a stable order
            raise SchemaError(f"foreign-key cycle between tracked tables: {exc.args[1]}") from exc
        rank = dict(priority or {})
        for table in reversed(list(TopologicalSorter(graph).static_order())):   # children first
            for parent in graph[table]:
                rank[parent] = max(rank.get(parent, 0), rank.get(table, 0))
        out: list[str] = []
        ready: list[str] = []
        while sorter.is_active():
            ready += sorter.get_ready()
            ready.sort(key=lambda t: (-rank.get(t, 0), t))
            table = ready.pop(0)
            out.append(table)
            sorter.done(table)
        return out


def introspect(conn: psycopg.Connection) -> Schema:
    """Tracked tables (``sync.tracked_table``) with columns and foreign keys."""
    try:
        tracked = conn.execute(
            "SELECT tablename, pk_column FROM sync.tracked_table ORDER BY tablename").fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaError("this database has no regionsync schema; run `regionsync migrate "
                          "--config region.yaml` first") from exc
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.rollback()
    cols = conn.execute("""
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.atttypid < 16384,  -- FirstNormalObjectId: built in
               a.attnum
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relname = ANY(%s)
        ORDER BY c.relname, a.attnum""", ([t for t, _ in tracked],)).fetchall()
    fks = conn.execute("""
        SELECT c.relname, p.relname,
               array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, i)
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
                     ORDER BY u.i)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_class p ON p.oid = k.confrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype = 'f' AND n.nspname = 'public' AND c.relname = ANY(%s)""",
        ([t for t, _ in tracked],)).fetchall()
    # Alternate keys: whole-column unique indexes but the primary key (a partial or an
    # expression index is no business key a peer's row can be matched on)
    uniques = conn.execute("""
        SELECT c.relname, ic.relname,
               array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY u(n, o)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.n
                     ORDER BY u.o)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.indisunique AND NOT i.indisprimary AND i.indpred IS NULL
          AND i.indexprs IS NULL AND n.nspname = 'public' AND c.relname = ANY(%s)
        ORDER BY 1, 2""", ([t for t, _ in tracked],)).fetchall()
    tables: dict[str, TableInfo] = {}
    for name, pk in tracked:
        every = [c for t, c, *_ in cols if t == name]
        if not every:
            raise SchemaError(f"tracked table {name!r} does not exist in schema public")
        meta = {BASE_COLUMN, CHANGED_COLUMN} | {
            c for c in every if c.endswith(VERSION_SUFFIX)
            and c.removesuffix(VERSION_SUFFIX) in every} if BASE_COLUMN in every else set()
        names = tuple(c for c in every if c not in meta)
        tables[name] = TableInfo(
            name=name, pk=pk, columns=names,
            types={c: ty for t, c, ty, *_ in cols if t == name},
            foreign_keys=tuple(ForeignKey(tuple(k), p) for t, p, k in fks if t == name),
            not_null=frozenset(c for t, c, _, nn, *_ in cols if t == name and nn),
            builtin=frozenset(c for t, c, _, _, b, _ in cols if t == name and b),
            versioned=tuple(c for c in names if c + VERSION_SUFFIX in meta),
            attnums={c: n for t, c, *_, n in cols if t == name},
            alternate_keys=tuple(AlternateKey(ix, tuple(k)) for t, ix, k in uniques
                                 if t == name))
    return Schema(tables)
