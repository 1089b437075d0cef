/*
 * regionsync_capture: the capture triggers in C.
 *
 * The same contract as the PL/pgSQL triggers that `sync.enable_change_tracking` generates
 * when this extension is not installed (alembic/versions/0016_c_capture.py says what each
 * one does); those remain the fallback and are tested with the same suite. Why C: the
 * PL/pgSQL row trigger and the statement triggers' interpreter were most of what change
 * tracking cost the application's own writes (python -m bench --capture-tax-only). Here
 *
 *   - the BEFORE UPDATE row trigger stamps versionnumber, modifiedon and sync_origin
 *     with no SQL at all (sequence, clock and column comparison are direct calls), and
 *   - the AFTER statement triggers read the transition tables natively (keys, versions,
 *     the forgery checks, the key-stripe locks) and write the journal row without an
 *     executor. Rare paths (a forged or tombstone-shadowed insert) run the same
 *     SQL as the PL/pgSQL version, over the transition table.
 *
 * Security: nothing here reads a setting unless the current user is a member of
 * regionsync_apply, so an application role cannot skip capture or forge provenance with
 * set_config. The journal and tombstones are written as the owner of schema `sync` (as
 * the SECURITY DEFINER PL/pgSQL functions are), with search_path pinned, and only for
 * tables in schema public. Like those, the functions live in schema sync, which
 * application roles cannot use, and EXECUTE is revoked from PUBLIC.
 *
 * Units: common.c, before_update.c, after.c, journal.c, tombstones.c (capture.h).
 */
#include "capture.h"

PG_MODULE_MAGIC;
