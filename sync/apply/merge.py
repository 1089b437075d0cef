"""The SQL of a per-column merge (migration 0018): which version decides a row's existence,
and how an upsert decides column by column. Kept apart from the applier, which runs it."""

from __future__ import annotations

from psycopg import sql

from sync import versions
from sync.db.catalog import TableInfo

# The upsert of a staged segment (run by the applier, measured alone by bench.merge_cost):
# rows older than a tombstone of their key are left out; {updates} and {wins} are
# merge_columns' (or, without per-column versions, a row's last-writer-wins); {one}
# narrows it to one staged key when a page is applied row by row.
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
        RETURNING (xmax = 0) AS inserted)
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM r""")


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


def merge_columns(info: TableInfo, cols: tuple[str, ...], stamped: tuple[str, ...], *,
                  backfill: bool, groups: tuple[tuple[str, ...], ...] = ()
                  ) -> tuple[sql.Composable, sql.Composable]:
    """The SET list and WHERE of a per-column merge (migration 0018).

    A row's base is its incarnation (the insert that created it). The newer incarnation
    wins whole: a key inserted again after a delete, or created in two regions at once,
    takes the later insert's sent columns, and edits of the older one count no more. Within
    one incarnation each sent column keeps the newer of its two versions (a NULL version is
    the base); the row is written only when some incoming column wins. ``sync_changed`` is
    the mask of the columns that won: a forwarding region's journal entry carries it.
    The columns of a group (policy ``column_groups``) are decided together, by the newest
    version among them on each side, so a merge never pairs one side's amount with the
    other's currency.
    """
    op = sql.SQL(">=" if backfill else ">")

    def version(side: str, c: str) -> sql.Composable:
        return sql.SQL("coalesce({s}.{v}, {s}.sync_base)").format(
            s=sql.SQL(side), v=sql.Identifier(c + "__v"))

    def group_version(side: str, members: tuple[str, ...]) -> sql.Composable:
        if len(members) == 1:
            return version(side, members[0])
        return sql.SQL("greatest({})").format(
            sql.SQL(", ").join(version(side, m) for m in members))

    group_of = {c: g for g in groups for c in g if all(m in cols for m in g)}
    newer_base = sql.SQL("EXCLUDED.sync_base > t.sync_base")
    same_base = sql.SQL("EXCLUDED.sync_base = t.sync_base")
    sent = set(cols)
    sets: list[sql.Composable] = []
    wins: list[sql.Composable] = []
    changed: list[sql.Composable] = []
    for c in info.versioned:
        col, ver = sql.Identifier(c), sql.Identifier(c + "__v")
        if c not in sent:
            # not carried by this peer: as it was, its version explicit if the base moves
            sets.append(sql.SQL("{v} = CASE WHEN {nb} THEN coalesce(t.{v}, t.sync_base) "
                                "ELSE t.{v} END").format(v=ver, nb=newer_base))
            continue
        members = group_of.get(c, (c,))
        won = sql.SQL("{} {} {}").format(group_version("EXCLUDED", members), op,
                                         group_version("t", members))
        takes = sql.SQL("({nb} OR {won})").format(nb=newer_base, won=won)
        sets.append(sql.SQL("{c} = CASE WHEN {takes} THEN EXCLUDED.{c} ELSE t.{c} END").format(
            c=col, takes=takes))
        sets.append(sql.SQL("{v} = CASE WHEN {takes} THEN EXCLUDED.{v} ELSE t.{v} END").format(
            v=ver, takes=takes))
        wins.append(won)
        changed.append(sql.SQL("CASE WHEN {} THEN {}::bigint ELSE 0 END").format(
            won, sql.Literal(info.bit(c))))
    for c in (*cols, *stamped):
        if c == "versionnumber" or (c in info.columns and c not in info.versioned
                                    and c not in (info.pk, "createdon", "modifiedon",
                                                  "sync_origin")):
            sets.append(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)))
    newer = sql.SQL("(EXCLUDED.modifiedon, EXCLUDED.sync_origin) > (t.modifiedon, t.sync_origin)")
    sets += [
        sql.SQL("createdon = CASE WHEN {} THEN EXCLUDED.createdon ELSE t.createdon END"
                ).format(newer_base),
        sql.SQL("modifiedon = CASE WHEN {} THEN EXCLUDED.modifiedon ELSE t.modifiedon END"
                ).format(newer),
        sql.SQL("sync_origin = CASE WHEN {} THEN EXCLUDED.sync_origin ELSE t.sync_origin END"
                ).format(newer),
        sql.SQL("sync_base = greatest(EXCLUDED.sync_base, t.sync_base)"),
        sql.SQL("sync_changed = CASE WHEN {} THEN NULL ELSE {} END").format(
            newer_base, sql.SQL(" | ").join(changed) if changed else sql.SQL("NULL")),
    ]
    where = sql.SQL("({nb} OR ({same} AND ({any})))").format(
        nb=newer_base, same=same_base,
        any=sql.SQL(" OR ").join(wins) if wins else sql.SQL("false"))
    return sql.SQL(", ").join(sets), where


__all__ = ["UPSERT", "existence", "merge_columns"]
