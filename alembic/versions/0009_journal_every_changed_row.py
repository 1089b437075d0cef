"""Journal every changed row of an UPDATE, however its statement interleaves.

0004-0007 told changed rows from no-op updates by ``new version > the largest old
version of the statement``. A multi-row UPDATE that waits for a row lock (held by apply,
or by another writer that updates that row again before committing) re-reads that row
with an old version newer than the versions it already gave the rows before it; those
rows then looked unchanged and got no journal entry, so the change never left the region
(found by the convergence stress test, seed 101). A changed row is now one whose version
differs from its own old version (old and new rows joined by key).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BEFORE = """                FROM new_rows n
                WHERE n.versionnumber > (SELECT coalesce(max(o.versionnumber), 0) FROM old_rows o)
                GROUP BY n.sync_origin;"""
AFTER = """                FROM new_rows n JOIN old_rows o ON o.%2$I = n.%2$I
                WHERE n.versionnumber IS DISTINCT FROM o.versionnumber
                GROUP BY n.sync_origin;"""


def _enable_function() -> str:
    """0007's generator of the capture triggers, with the corrected UPDATE journal."""
    spec = importlib.util.spec_from_file_location(
        "regionsync_0007", Path(__file__).with_name("0007_integrity.py"))
    assert spec is not None and spec.loader is not None
    m0007 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m0007)
    text = m0007.UPGRADE
    start = text.index("CREATE OR REPLACE FUNCTION sync.enable_change_tracking")
    end = text.index("END $enable$;") + len("END $enable$;")
    body = text[start:end]
    assert body.count(BEFORE) == 2, "0007's UPDATE journal changed; update 0009"
    return body.replace(BEFORE, AFTER)


def upgrade() -> None:
    op.execute(_enable_function() + "\nSELECT sync.enable_change_tracking(tablename) "
               "FROM sync.tracked_table;")


def downgrade() -> None:
    raise NotImplementedError("0009 replaces the capture triggers; restore from a backup")
