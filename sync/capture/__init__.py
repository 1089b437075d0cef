"""Capture: what the region's database runs so that peers can pull its changes.

The first stage of the pipeline runs inside PostgreSQL, not in the daemon: the capture
triggers stamp every tracked row with ``versionnumber``, ``modifiedon`` and
``sync_origin`` and journal each statement's keys into ``sync.change_set`` (deletes also
into ``sync.tombstone``); the owner's read side (``journal_since``, ``egress_*``) serves
that journal to each destination through its own role. Every one of these server-side
objects is written down here once, as the text the database holds:

- ``sql/functions/<schema.name>.sql`` and ``sql/views/<schema.name>.sql``: one current
  file per object, applied by the migration that last changed it (`objects`);
- ``sync.enable_plpgsql_capture`` is the generator of the per-table PL/pgSQL triggers;
  ``ext/regionsync_capture`` holds the same contract in C, attached by
  ``sync.enable_c_capture``;
- `install` chooses between the two paths (``capture: auto | c | plpgsql``).
"""
