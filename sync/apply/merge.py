"""The SQL of a per-column merge (migration 0018): which version decides a row's existence,
and how an upsert decides column by column. Kept apart from the applier, which runs it."""

from __future__ import annotations

from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from sync import versions
from sync.db.catalog import TableInfo

# Statements kept per connection, least recently used out first (the applier's upserts,
# the conflict recorder's queries): a shape of segment changes only with a policy or a
# schema, so a daemon holds a handful; the bound is for a mesh whose policies churn.
SHAPES_KEPT = 256

# The upsert of a staged segment (run by the applier, measured alone by bench.merge_cost):
# rows older than a tombstone of their key are left out; {updates} and {wins} are one
# pass's SET list and WHERE (``passes``); {one} narrows it to one staged key when a page is
# applied row by row. It returns the rows inserted, updated, and — {rest}, when another
# pass follows — the staged keys it did not write (NULL when none): that pass runs for
# those alone.
UPSERT = sql.SQL("""
    WITH r AS (
        INSERT INTO public.{table} AS t ({cols})
        SELECT {scols} FROM {stage} s
        WHERE {one}
          AND NOT EXISTS (SELECT 1 FROM sync.tombstone tb
                          WHERE tb.tablename = {tname} AND tb.pk = s.{pk}
                            AND (tb.modifiedon, tb.origin) >= {s_version})
        ORDER BY s.{pk}     -- row locks in key order: no deadlock between appliers
        ON CONFLICT ({pk}) DO UPDATE SET {updates}
        WHERE {wins}
        RETURNING t.{pk} AS k, (xmax = 0) AS inserted)
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), {rest}
    FROM r""")

# UPSERT's {rest} for a pass that another follows: the staged keys it did not write —
# looked for only when it wrote fewer rows than it was given (a count of the stage
# instead of a second scan and an anti-join on the common path: 3 % of a page's upsert).
_REST = sql.SQL("""CASE WHEN count(*) < (SELECT count(*) FROM {stage} s WHERE {one})
                        THEN (SELECT array_agg(s.{pk}) FROM {stage} s
                              WHERE {one} AND s.{pk} NOT IN (SELECT k FROM r)) END""")


def existence(info: TableInfo, alias: str) -> sql.Composable:
    """The (time, origin) a tombstone is compared with: the version of the insert that
    created the row (its base). A delete wins over every edit of the row it deleted, and
    only a re-insert after it — whose base is newer — brings the key back. Edits cannot
    decide existence: their versions cover columns that not every region may see.
    Tombstones keep (time, origin name); the base's origin is named from ``sync.origin``,
    looked up only for a key that has a tombstone."""
    if not info.per_column:
        return sql.SQL("({a}.modifiedon, {a}.sync_origin)").format(a=sql.Identifier(alias))
    base = sql.Identifier(alias, "sync_base")
    return sql.SQL("({t}, (SELECT o.region FROM sync.origin o WHERE o.number = {n}))").format(
        t=versions.time_sql(base), n=versions.number_sql(base))


# A narrow segment (protocol 4: only the columns its range changed, see
# sync.source.narrow) is no whole row, so it never inserts: it updates rows of the same
# incarnation (the passes' WHERE, ``passes(narrow=True)``), in key order (the applier
# has the planner join by nested loop, the stage outside). Otherwise as UPSERT, with the
# stage's row as EXCLUDED; its first pass also returns {missing} (``_MISSING``).
NARROW_UPSERT = sql.SQL("""
    WITH r AS (
        UPDATE public.{table} AS t SET {updates}
        FROM (SELECT {scols} FROM {stage} s WHERE {one} ORDER BY s.{pk}) AS excluded
        WHERE t.{pk} = excluded.{pk} AND {wins}
        RETURNING t.{pk} AS k, false AS inserted)
    SELECT 0, count(*), {rest}, {missing} FROM r""")

# NARROW_UPSERT's {missing}: the staged keys that no row of the same or a newer
# incarnation held and no tombstone held back, when the first pass wrote fewer rows than
# were staged (NULL otherwise): the link reads them whole, in the batch's snapshot. In the
# UPDATE's own statement, so in its snapshot: a row another link inserts a moment later
# is read whole as well (a replay there), never taken for one this pass saw and skipped.
_MISSING = sql.SQL("""CASE WHEN count(*) < (SELECT count(*) FROM {stage} s WHERE {one})
        THEN (SELECT array_agg(s.{pk}) FROM {stage} s
              WHERE {one}
                AND NOT EXISTS (SELECT 1 FROM public.{table} x
                                WHERE x.{pk} = s.{pk} AND x.sync_base >= s.sync_base)
                AND NOT EXISTS (SELECT 1 FROM sync.tombstone tb
                                WHERE tb.tablename = {tname} AND tb.pk = s.{pk}
                                  AND (tb.modifiedon, tb.origin) >= {s_version})) END""")

_NEWER_BASE = sql.SQL("EXCLUDED.sync_base > t.sync_base")
_SAME_BASE = sql.SQL("EXCLUDED.sync_base = t.sync_base")


def _version(side: str, c: str) -> sql.Composable:
    """A column's version on one side; NULL is the row's base (the insert's version)."""
    return sql.SQL("coalesce({s}.{v}, {s}.sync_base)").format(
        s=sql.SQL(side), v=sql.Identifier(c + "__v"))


def _unit_version(side: str, members: tuple[str, ...]) -> sql.Composable:
    if len(members) == 1:
        return _version(side, members[0])
    return sql.SQL("greatest({})").format(
        sql.SQL(", ").join(_version(side, m) for m in members))


def _unit_of(cols: tuple[str, ...], groups: tuple[tuple[str, ...], ...]
             ) -> dict[str, tuple[str, ...]]:
    """Each sent column's unit of decision: its group (when all of it is sent), or itself."""
    group_of = {c: g for g in groups for c in g if all(m in cols for m in g)}
    return {c: group_of.get(c, (c,)) for c in cols}


def _wins(unit: tuple[str, ...], backfill: bool) -> sql.Composable:
    """The incoming side wins the unit: its version is newer (at least as new, in a
    backfill, which takes the owner's copy on a tie)."""
    return sql.SQL("{} {} {}").format(_unit_version("EXCLUDED", unit),
                                      sql.SQL(">=" if backfill else ">"),
                                      _unit_version("t", unit))


def _row_sets(info: TableInfo, cols: tuple[str, ...], stamped: tuple[str, ...],
              changed: list[sql.Composable] | None) -> list[sql.Composable]:
    """What both passes set alike: the versions of columns this peer does not carry (as
    they were, explicit if the base moves), the unversioned columns, the row's times and
    origin, its base, and the mask of the columns that won (the journal entry's ``cols``,
    exact: egress hides an entry from a destination that receives none of them).

    ``changed`` None: the apply journals nothing (a region that forwards nothing), so no
    entry will carry a mask; it is cleared instead of computed (a CASE per column on every
    row). Masks are read only from the rows a statement writes, as it writes them (the
    capture triggers), so a cleared one is never read."""
    sets: list[sql.Composable] = []
    for c in info.versioned:
        if c not in cols:
            ver = sql.Identifier(c + "__v")
            sets.append(sql.SQL("{v} = CASE WHEN {nb} THEN coalesce(t.{v}, t.sync_base) "
                                "ELSE t.{v} END").format(v=ver, nb=_NEWER_BASE))
    for c in (*cols, *stamped):
        if c == "versionnumber" or (c in info.columns and c not in info.versioned
                                    and c not in (info.pk, "createdon", "modifiedon",
                                                  "sync_origin")):
            sets.append(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)))
    newer = sql.SQL("(EXCLUDED.modifiedon, EXCLUDED.sync_origin) > (t.modifiedon, t.sync_origin)")
    return [*sets,
            sql.SQL("createdon = CASE WHEN {} THEN EXCLUDED.createdon ELSE t.createdon END"
                    ).format(_NEWER_BASE),
            sql.SQL("modifiedon = CASE WHEN {} THEN EXCLUDED.modifiedon ELSE t.modifiedon END"
                    ).format(newer),
            sql.SQL("sync_origin = CASE WHEN {} THEN EXCLUDED.sync_origin ELSE t.sync_origin "
                    "END").format(newer),
            sql.SQL("sync_base = greatest(EXCLUDED.sync_base, t.sync_base)"),
            sql.SQL("sync_changed = NULL") if changed is None else
            sql.SQL("sync_changed = CASE WHEN {} THEN NULL ELSE {} END").format(
                _NEWER_BASE, sql.SQL(" | ").join(changed) if changed else sql.SQL("NULL"))]


def _mask(info: TableInfo, c: str, won: sql.Composable) -> sql.Composable:
    return sql.SQL("CASE WHEN {} THEN {}::bigint ELSE 0 END").format(won, sql.Literal(info.bit(c)))


def merge_columns(info: TableInfo, cols: tuple[str, ...], stamped: tuple[str, ...], *,
                  backfill: bool, groups: tuple[tuple[str, ...], ...] = (),
                  journal: bool = True) -> tuple[sql.Composable, sql.Composable]:
    """The SET list and WHERE of a per-column merge (migration 0018).

    A row's base is its incarnation (the insert that created it). The newer incarnation
    wins whole: a key inserted again after a delete, or created in two regions at once,
    takes the later insert's sent columns, and edits of the older one count no more. Within
    one incarnation each sent column keeps the newer of its two versions (a NULL version is
    the base); the row is written only when some incoming column wins. ``sync_changed`` is
    the mask of the columns that won: a forwarding region's journal entry carries it.
    The columns of a group (policy ``column_groups``) are decided together, by the newest
    version among them on each side, so a merge never pairs one side's amount with the
    other's currency. ``journal`` False: no mask (see ``_row_sets``).
    """
    unit_of = _unit_of(cols, groups)
    sets: list[sql.Composable] = []
    wins: list[sql.Composable] = []
    changed: list[sql.Composable] = []
    for c in info.versioned:
        if c not in unit_of:
            continue
        col, ver = sql.Identifier(c), sql.Identifier(c + "__v")
        won = _wins(unit_of[c], backfill)
        takes = sql.SQL("({nb} OR {won})").format(nb=_NEWER_BASE, won=won)
        sets.append(sql.SQL("{c} = CASE WHEN {takes} THEN EXCLUDED.{c} ELSE t.{c} END").format(
            c=col, takes=takes))
        sets.append(sql.SQL("{v} = CASE WHEN {takes} THEN EXCLUDED.{v} ELSE t.{v} END").format(
            v=ver, takes=takes))
        wins.append(won)
        changed.append(_mask(info, c, won))
    where = sql.SQL("({nb} OR ({same} AND ({any})))").format(
        nb=_NEWER_BASE, same=_SAME_BASE,
        any=sql.SQL(" OR ").join(wins) if wins else sql.SQL("false"))
    return sql.SQL(", ").join(
        [*sets, *_row_sets(info, cols, stamped, changed if journal else None)]), where


def passes(info: TableInfo, cols: tuple[str, ...], stamped: tuple[str, ...], *,
           backfill: bool, groups: tuple[tuple[str, ...], ...] = (), journal: bool = True,
           narrow: bool = False) -> list[tuple[sql.Composable, sql.Composable]]:
    """The (SET list, WHERE) of each pass of UPSERT over a staged segment, in order; a pass
    runs only while rows remain that no earlier pass wrote.

    With per-column versions most incoming rows are at least as new as the target's in
    every column (nobody else edited the row meanwhile): the first pass writes those by
    assignment (``dominant_columns``), one comparison per column where the merge's
    ``CASE``s cost four. The second (``merge_columns``) runs only for the staged keys the
    first did not write — a concurrent edit, a replay, another incarnation, a row a
    tombstone holds back — and decides those column by column. A row-level table has one
    pass. ``journal``: whether the apply journals what it writes (then each row gets the
    mask of the columns that won; see ``_row_sets``). ``narrow``: the segment holds only
    some columns (``NARROW_GUARD``); each pass writes only a row of the same incarnation,
    as the row is when it is locked."""
    if not info.per_column:
        return [row_columns(info, cols, stamped, backfill=backfill)]
    if narrow:
        stamped, kept = tuple(c for c in stamped if c != "versionnumber"), stamped
    merge = merge_columns(info, cols, stamped, backfill=backfill, groups=groups,
                          journal=journal)
    if not any(c in info.versioned for c in cols):
        steps = [merge]                      # no column to dominate in: only the bases decide
    else:
        steps = [dominant_columns(info, cols, stamped, backfill=backfill, groups=groups,
                                  journal=journal), merge]
    if narrow:   # an UPDATE: its new versionnumber is the column's default, as an insert's
        stamp = [sql.SQL("versionnumber = DEFAULT")] if "versionnumber" in kept else []
        steps = [(sql.SQL(", ").join([sets, *stamp]),
                  sql.SQL("({} AND {})").format(_SAME_BASE, where)) for sets, where in steps]
    return steps


def row_columns(info: TableInfo, cols: tuple[str, ...], stamped: tuple[str, ...], *,
                backfill: bool) -> tuple[sql.Composable, sql.Composable]:
    """The SET list and WHERE of row-level last-writer-wins (a table without per-column
    versions): every sent column assigned when the row's (time, origin) is newer."""
    return (sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                               for c in (*cols, *stamped) if c != info.pk),
            sql.SQL("(EXCLUDED.modifiedon, EXCLUDED.sync_origin) {} "
                    "(t.modifiedon, t.sync_origin)").format(sql.SQL(">=" if backfill else ">")))


class Upsert:
    """The passes of UPSERT over one stage (``passes``; ``names``: table, cols, scols,
    stage, tname, pk, s_version), composed once. The applier keeps one per shape of
    segment: composing the per-column statements took more Python than the rest of a
    page's apply (2.7 ms a page, on the thread the apply lanes share), so the bulk form is
    kept as the bytes sent; a page applied row by row composes its own."""

    def __init__(self, steps: list[tuple[sql.Composable, sql.Composable]], *,
                 template: sql.SQL = UPSERT, **names: sql.Composable) -> None:
        self.steps = steps
        self.template = template
        self.narrow = template is NARROW_UPSERT
        self.names = names
        self._bulk: list[bytes] | None = None

    def statements(self, one: sql.Composable) -> list[sql.Composed]:
        """Each pass's statement for the staged rows ``one`` selects; a later pass also
        takes only the keys left by the one before (``%(rest)s``)."""
        pk, stage = self.names["pk"], self.names["stage"]
        out: list[sql.Composed] = []
        for n, (updates, wins) in enumerate(self.steps):
            these = one if not n else sql.SQL("({}) AND s.{} = ANY(%(rest)s)").format(one, pk)
            rest = (_REST.format(one=these, pk=pk, stage=stage) if n + 1 < len(self.steps)
                    else sql.SQL("NULL"))
            extra = {}
            if self.narrow:
                extra["missing"] = (_MISSING.format(one=these, **self.names) if not n
                                    else sql.SQL("NULL"))
            out.append(self.template.format(one=these, updates=updates, wins=wins, rest=rest,
                                            **self.names, **extra))
        return out

    def run(self, conn: psycopg.Connection, one: sql.Composable | None = None,
            params: dict[str, Any] | None = None) -> Written:
        """Apply the staged rows (those ``one`` selects, with ``params``; all when None);
        returns the rows inserted and updated, and a narrow segment's keys to read whole."""
        if one is None:
            if self._bulk is None:
                self._bulk = [s.as_bytes(conn) for s in self.statements(sql.SQL("true"))]
            stmts: list[bytes | sql.Composed] = list(self._bulk)
        else:
            stmts = list(self.statements(one))
        ins = upd = 0
        rest: list[Any] | None = None
        missing: list[Any] = []
        for n, stmt in enumerate(stmts):
            args = params
            if n:
                if not rest:
                    break
                args = {**(params or {}), "rest": rest}
            row = conn.execute(stmt, args).fetchone()
            if row is None:
                raise RuntimeError("the upsert returned no row")
            ins, upd, rest = ins + row[0], upd + row[1], row[2]
            if not n and self.narrow:
                missing = row[3] or []
        return Written(ins, upd, missing)


class Written(NamedTuple):
    """What an ``Upsert`` wrote: rows inserted and updated, and the keys of a narrow
    segment it left to be read whole (``_MISSING``)."""

    inserted: int
    updated: int
    missing: list[Any]


def upsert(conn: psycopg.Connection, steps: list[tuple[sql.Composable, sql.Composable]], *,
           one: sql.Composable, params: dict[str, Any] | None = None,
           template: sql.SQL = UPSERT, **names: sql.Composable) -> tuple[int, int]:
    """Run UPSERT's (or ``template``'s) ``passes`` once over a staged segment (see
    ``Upsert``); returns the rows (inserted, updated)."""
    written = Upsert(steps, template=template, **names).run(conn, one, params)
    return written.inserted, written.updated


def dominant_columns(info: TableInfo, cols: tuple[str, ...], stamped: tuple[str, ...], *,
                     backfill: bool, groups: tuple[tuple[str, ...], ...] = (),
                     journal: bool = True) -> tuple[sql.Composable, sql.Composable]:
    """The SET list and WHERE of the first of ``passes``: the rows for which the merge
    would take every sent column from the incoming side, written by assignment.

    That is a newer incarnation, or the same one with every unit (column or group) won by
    the incoming side or held at the very same versions, and at least one won. A version
    names one write (its time and origin), so a column held at the same version holds the
    same value, and assigning it changes nothing the merge would have kept: on such a row
    the two write the same values, versions and mask. Anything else — a unit the target
    holds newer, or a group whose newest versions tie while its members differ — is left
    to the merge, in the second pass.
    """
    unit_of = _unit_of(cols, groups)
    sets: list[sql.Composable] = []
    holds: list[sql.Composable] = []
    wins: list[sql.Composable] = []
    changed: list[sql.Composable] = []
    tested: set[tuple[str, ...]] = set()
    for c in info.versioned:
        if c not in unit_of:
            continue
        unit = unit_of[c]
        sets.append(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)))
        sets.append(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c + "__v")))
        won = _wins(unit, backfill)
        changed.append(_mask(info, c, won))
        if unit in tested:
            continue                            # a group is tested once
        tested.add(unit)
        wins.append(won)
        if len(unit) == 1:
            holds.append(sql.SQL("{} >= {}").format(_version("EXCLUDED", c), _version("t", c)))
        else:
            holds.append(sql.SQL("({} OR ({}))").format(won, sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(_version("EXCLUDED", m), _version("t", m))
                for m in unit)))
    where = sql.SQL("({nb} OR ({same} AND {holds} AND ({any})))").format(
        nb=_NEWER_BASE, same=_SAME_BASE, holds=sql.SQL(" AND ").join(holds),
        any=sql.SQL(" OR ").join(wins))
    return sql.SQL(", ").join(
        [*sets, *_row_sets(info, cols, stamped, changed if journal else None)]), where


__all__ = ["NARROW_UPSERT", "UPSERT", "Upsert", "Written", "dominant_columns",
           "existence", "merge_columns", "passes", "row_columns", "upsert"]
