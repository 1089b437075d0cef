"""Narrow reads (protocol 4, migration 0023): a delta whose range of a table holds only
updates sends the columns they changed. The owner's journal says which, per entry
(``sync.egress_changes(...).cols``, cut to the columns the destination is sent); apply
runs such a page as an update of rows of the same incarnation (``sync.apply.merge``),
and the link reads whole the keys it finds no such row for (``PeerLink._read_whole``)."""

from __future__ import annotations

from psycopg import sql

from sync.db.catalog import BASE_COLUMN, VERSION_SUFFIX, TableInfo
from sync.policy.model import TableRule
from sync.records import ReadPlan

# In the reader's count of a range per table (``SourceReader.pending``): the union of the
# columns its updates changed, NULL unless every entry is an update with a known mask or
# a delete.
RANGE_MASK = sql.SQL("CASE WHEN bool_and(c.op = 'd' OR (c.op = 'u' AND c.cols IS NOT NULL))"
                     " THEN bit_or(c.cols) END")


def narrow_columns(info: TableInfo, rule: TableRule, mask: int | None, plan: ReadPlan, *,
                   author: str | None = None, owner_filtered: frozenset[str] = frozenset()
                   ) -> tuple[str, ...] | None:
    """What a delta's range of updates that changed the columns of ``mask`` (journal bits,
    see ``TableInfo.bit``; None: unknown) sends: the key, the row's times and origin, the
    changed columns with every column of their groups and alternate keys (which merge or
    collide as one), their versions and the base.

    None — send every column — for an initial load, a read of listed keys, a retired
    ``author``'s catch-up, a table whose rows may enter the destination's filter (it would
    lack them: a row filter of ours or ``owner_filtered``), a table that sends a column
    without a version (assigned on every write, so always sent), and when the changed
    columns are all of them. The row's time and origin are still derived from every
    version the destination reads (``sync.source.rowversion``): the same values a whole
    row would carry."""
    if (mask is None or not info.per_column or plan.token is None or plan.keys is not None
            or author is not None or rule.rows is not None or info.name in owner_filtered):
        return None
    sent = [c for c in info.columns if c in rule.columns and c != info.pk]
    if any(c not in info.versioned for c in sent):
        return None
    chosen = {c for c in sent if info.bit(c) & mask}
    for unit in (*rule.groups, *(k.columns for k in info.alternate_keys)):
        if chosen.intersection(unit):
            chosen.update(c for c in unit if c in sent)
    if not chosen or len(chosen) == len(sent):
        return None
    wire = tuple(c for c in rule.wire_columns(info) if c not in sent or c in chosen)
    return (*wire, *(c + VERSION_SUFFIX for c in sent if c in chosen), BASE_COLUMN)


__all__ = ["RANGE_MASK", "narrow_columns"]
