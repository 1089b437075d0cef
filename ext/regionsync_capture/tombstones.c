/* tombstones.c: reading sync.tombstone without SQL. */
#include "capture.h"
/* The tombstone of (table, key) into slot, through a scan of sync.tombstone_pkey. */
bool
rs_tombstone_of(IndexScanDesc scan, Datum table_text, pg_uuid_t *pk, TupleTableSlot *slot)
{
	ScanKeyData key[2];

	ScanKeyEntryInitialize(&key[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   DEFAULT_COLLATION_OID, F_TEXTEQ, table_text);
	ScanKeyEntryInitialize(&key[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   InvalidOid, F_UUID_EQ, UUIDPGetDatum(pk));
	index_rescan(scan, key, 2, NULL, 0);
	return index_getnext_slot(scan, ForwardScanDirection, slot);
}

/* (tombstone time, origin) >= (row time, here), as the row comparison orders them */
bool
rs_at_least_as_new(TimestampTz tb_time, Datum tb_origin, TimestampTz row_time, Datum here)
{
	if (tb_time != row_time)
		return tb_time > row_time;
	return DatumGetInt32(DirectFunctionCall2Coll(bttextcmp, DEFAULT_COLLATION_OID,
												 tb_origin, here)) >= 0;
}

/*
 * Does a tombstone of one of these keys stand at least as new as the row that re-inserts
 * it (a delete from a clock ahead of ours)? Tombstones are older than rows written now,
 * so one descent of the tombstones' time index from the statement's oldest row usually
 * answers: nothing that new. Those that are (future clocks, erased keys' immortal
 * tombstones) are matched against the statement's keys; past as many as the statement
 * has rows, each key is probed by the primary key instead. A fresh snapshot, as SQL run
 * here would take: the key-stripe locks are already held, so an applier's delete of one
 * of these keys has committed (and shows) or waits for us.
 */
bool
rs_shadowed_by_tombstone(const char *table, const char *here, Row *rows, int n,
					  TimestampTz oldest)
{
	Relation	trel = table_open(rs_sync_relation("tombstone"), AccessShareLock);
	Relation	irel = index_open(rs_sync_relation("tombstone_modifiedon"), AccessShareLock);
	TupleDesc	desc = RelationGetDescr(trel);
	int			a_tab = rs_column(desc, "tablename", true, trel);
	int			a_pk = rs_column(desc, "pk", true, trel);
	int			a_mod = rs_column(desc, "modifiedon", true, trel);
	int			a_org = rs_column(desc, "origin", true, trel);
	Datum		table_text = CStringGetTextDatum(table);
	Datum		here_text = CStringGetTextDatum(here);
	TupleTableSlot *slot = table_slot_create(trel, NULL);
	ScanKeyData key[2];
	IndexScanDesc scan;
	HTAB	   *keys = NULL;
	int			seen = 0;
	bool		hit = false,
				probe = false;

	PushActiveSnapshot(GetTransactionSnapshot());
	ScanKeyInit(&key[0], 1, BTGreaterEqualStrategyNumber, F_TIMESTAMPTZ_GE,
				TimestampTzGetDatum(oldest));
	scan = rs_index_beginscan(trel, irel, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, key, 1, NULL, 0);
	while (!hit && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		tab = slot_getattr(slot, a_tab, &isnull);
		Datum		pk;
		Row		   *r;
		bool		found;

		if (++seen > n)
		{
			probe = true;
			break;
		}
		if (isnull || !DatumGetBool(DirectFunctionCall2Coll(texteq, DEFAULT_COLLATION_OID,
															 tab, table_text)))
			continue;
		if (keys == NULL)
		{
			HASHCTL		ctl;

			ctl.keysize = sizeof(pg_uuid_t);
			ctl.entrysize = sizeof(pg_uuid_t) + sizeof(Row *);
			ctl.hcxt = CurrentMemoryContext;
			keys = hash_create("regionsync inserted keys", Max(n, 16), &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
			for (int i = 0; i < n; i++)
			{
				char	   *entry = hash_search(keys, &rows[i].pk, HASH_ENTER, NULL);

				*(Row **) (entry + sizeof(pg_uuid_t)) = &rows[i];
			}
		}
		pk = slot_getattr(slot, a_pk, &isnull);
		if (isnull)
			continue;
		{
			char	   *entry = hash_search(keys, DatumGetUUIDP(pk), HASH_FIND, &found);

			if (!found)
				continue;
			r = *(Row **) (entry + sizeof(pg_uuid_t));
		}
		hit = rs_at_least_as_new(DatumGetTimestampTz(slot_getattr(slot, a_mod, &isnull)),
							  slot_getattr(slot, a_org, &isnull), r->modifiedon, here_text);
	}
	index_endscan(scan);
	index_close(irel, NoLock);

	if (probe)
	{
		Relation	pkey = index_open(rs_sync_relation("tombstone_pkey"), AccessShareLock);

		scan = rs_index_beginscan(trel, pkey, GetActiveSnapshot(), 2, 0);
		for (int i = 0; i < n && !hit; i++)
		{
			if (rs_tombstone_of(scan, table_text, &rows[i].pk, slot))
			{
				bool		isnull;

				hit = rs_at_least_as_new(DatumGetTimestampTz(slot_getattr(slot, a_mod, &isnull)),
									  slot_getattr(slot, a_org, &isnull), rows[i].modifiedon,
									  here_text);
			}
		}
		index_endscan(scan);
		index_close(pkey, NoLock);
	}
	ExecDropSingleTupleTableSlot(slot);
	table_close(trel, NoLock);
	PopActiveSnapshot();
	return hit;
}
