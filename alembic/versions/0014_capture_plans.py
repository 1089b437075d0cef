"""Capture triggers whose plans stay linear however large the tombstones grow.

Found by the capture-tax benchmark (`python -m bench --capture-tax-only`):

- The tombstone probes compared ``sync.tombstone.tablename`` (text, the database's
  default collation) with ``TG_TABLE_NAME`` (name, collation "C"). A comparison under
  another collation cannot use the first column of the tombstone's primary key, so each
  probe scanned the whole index: a 1,000-row INSERT took 183 ms against 7 ms untracked
  once some 20,000 tombstones existed, and it grew with them. The name is now text in
  the default collation.
- 0009's "changed rows" join of the statement's new and old rows: PL/pgSQL's generic plan
  sees the transition tables as one row each and chose a nested loop, 1,000 × 1,000
  comparisons for a 1,000-row UPDATE (183 ms). It is now ``NOT IN`` over the old rows'
  (key, version) pairs, which PostgreSQL evaluates with a hashed subplan: linear.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

JOIN = """                FROM new_rows n JOIN old_rows o ON o.%2$I = n.%2$I
                WHERE n.versionnumber IS DISTINCT FROM o.versionnumber
                GROUP BY n.sync_origin;"""
NOT_IN = """                FROM new_rows n
                WHERE (n.%2$I, n.versionnumber) NOT IN (SELECT o.%2$I, o.versionnumber
                                                       FROM old_rows o)
                GROUP BY n.sync_origin;"""


def _enable_function() -> str:
    """0009's generator of the capture triggers (0007's, corrected), with both fixes."""
    spec = importlib.util.spec_from_file_location(
        "regionsync_0009", Path(__file__).with_name("0009_journal_every_changed_row.py"))
    assert spec is not None and spec.loader is not None
    m0009 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m0009)
    body = m0009._enable_function()
    assert body.count(JOIN) == 2, "0009's UPDATE journal changed; update 0014"
    assert body.count("tb.tablename = TG_TABLE_NAME") == 6, "0007's probes changed; update 0014"
    return (body.replace(JOIN, NOT_IN)
            .replace("tb.tablename = TG_TABLE_NAME",
                     'tb.tablename = (TG_TABLE_NAME::text COLLATE "default")'))


def upgrade() -> None:
    op.execute(_enable_function() + "\nSELECT sync.enable_change_tracking(tablename) "
               "FROM sync.tracked_table;")


def downgrade() -> None:
    raise NotImplementedError("0014 replaces the capture triggers; restore from a backup")
