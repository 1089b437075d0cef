/* after.c: the AFTER statement triggers, INSERT / UPDATE / DELETE. */
#include "capture.h"

PG_FUNCTION_INFO_V1(capture_after);

typedef struct RowKey
{
	pg_uuid_t	pk;
	int64		version;
} RowKey;
static int64
sequence_last_value(void)
{
	LOCAL_FCINFO(call, 1);
	Datum		v;

	InitFunctionCallInfoData(*call, NULL, 1, InvalidOid, NULL, NULL);
	call->args[0].value = ObjectIdGetDatum(rs_version_sequence());
	call->args[0].isnull = false;
	v = pg_sequence_last_value(call);
	return call->isnull ? 0 : DatumGetInt64(v);
}

/* Share the inserted keys' stripes, in stripe order (the order every locker uses): an
 * applier deleting one of them finishes first (and we see its tombstone), or waits. */
static void
share_stripes(int32 space, Row *rows, int n)
{
	bool		stripe[256] = {false};

	for (int i = 0; i < n; i++)
		stripe[DatumGetInt32(DirectFunctionCall1(uuid_hash, UUIDPGetDatum(&rows[i].pk))) & 255] = true;
	for (int s = 0; s < 256; s++)
		if (stripe[s])
			DirectFunctionCall2(pg_advisory_xact_lock_shared_int4, Int32GetDatum(space),
								Int32GetDatum(s));
}

/* The rare path of a local insert, as the PL/pgSQL trigger does it: the writer set the
 * system columns itself, or a tombstone of a key is at least as new. The statement's rows
 * are stamped as local writes now, past any tombstone, then journalled. */
static void
stamp_inserted(TriggerData *td, const char *table, const char *pkcol, const char *here,
			   int number)
{
	const char *prev = GetConfigOption("regionsync.stamped", true, false);
	const char *t = quote_identifier(table);
	const char *pk = quote_identifier(pkcol);
	const char *nr = quote_identifier(td->tg_trigger->tgnewtable);
	StringInfoData sql;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {CStringGetTextDatum(here), CStringGetTextDatum(table)};
	int			rc;

	if (SPI_register_trigger_data(td) != SPI_OK_TD_REGISTER)
		elog(ERROR, "regionsync: could not register the transition table");
	SPI_execute("SELECT set_config('regionsync.stamped', 'on', true), "
				"set_config('regionsync.journal', 'off', true)", false, 0);
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE public.%s t SET sync_origin = $1, modifiedon = s.stamp, ", t);
	{
		/* per-column versions: the base is the stamped row version, no column has its own */
		TupleDesc	desc = RelationGetDescr(td->tg_relation);

		for (int i = 0; i < desc->natts; i++)
		{
			const char *name = NameStr(TupleDescAttr(desc, i)->attname);
			size_t		len = strlen(name);

			if (TupleDescAttr(desc, i)->attisdropped)
				continue;
			if (strcmp(name, "sync_base") == 0 && rs_numeric_versions(desc, i))
				appendStringInfo(&sql, "sync_base = sync.version_of(s.stamp, %d), ", number);
			else if (strcmp(name, "sync_base") == 0)
				appendStringInfoString(&sql,
									   "sync_base = to_char(s.stamp AT TIME ZONE 'UTC', "
									   "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || ' ' || $1, ");
			else if (strcmp(name, "sync_changed") == 0 ||
					 (len > 3 && strcmp(name + len - 3, "__v") == 0))
				appendStringInfo(&sql, "%s = NULL, ", quote_identifier(name));
		}
	}
	appendStringInfo(&sql,
					 "versionnumber = nextval('public.regionsync_versionnumber_seq') "
					 "FROM (SELECT n.%s AS pk, greatest(clock_timestamp(), "
					 "  (SELECT tb.modifiedon + interval '1 microsecond' FROM sync.tombstone tb "
					 "   WHERE tb.tablename = $2 AND tb.pk = n.%s)) AS stamp FROM %s n) s "
					 "WHERE t.%s = s.pk", pk, pk, nr, pk);
	rc = SPI_execute_with_args(sql.data, 2, types, args, NULL, false, 0);
	if (rc < 0)
		elog(ERROR, "regionsync: stamping failed: %s", SPI_result_code_string(rc));
	{
		Oid			st[1] = {TEXTOID};
		Datum		sa[1] = {CStringGetTextDatum(prev ? prev : "")};

		SPI_execute_with_args("SELECT set_config('regionsync.stamped', $1, true), "
							  "set_config('regionsync.journal', '', true)", 1, st, sa, NULL,
							  false, 0);
	}
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO sync.change_set (tablename, op, origin, pks, versions) "
					 "SELECT $2, 'i', $1, array_agg(t.%s), array_agg(t.versionnumber) "
					 "FROM public.%s t JOIN %s n ON t.%s = n.%s HAVING count(*) > 0",
					 pk, t, nr, pk, pk);
	rc = SPI_execute_with_args(sql.data, 2, types, args, NULL, false, 0);
	if (rc < 0)
		elog(ERROR, "regionsync: journal write failed: %s", SPI_result_code_string(rc));
}

static void
after_insert(TriggerData *td, const char *table, const char *pkcol, int32 space,
			 const char *here, const char *applying, Row *rows, int n)
{
	TimestampTz started = GetCurrentStatementStartTimestamp();
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz oldest = DT_NOEND;
	bool		forged = false;
	int64		last;
	AsOwner		saved;

	if (applying != NULL)
	{
		int		   *pick = palloc(sizeof(int) * Max(n, 1));

		for (int i = 0; i < n; i++)
			pick[i] = i;
		rs_journal_by_origin(table, 'i', rows, pick, n);
		return;
	}
	share_stripes(space, rows, n);
	last = sequence_last_value();
	for (int i = 0; i < n && !forged; i++)
	{
		Row		   *r = &rows[i];

		forged = r->origin == NULL || strcmp(r->origin, here) != 0 ||
			r->modifiedon_null || r->modifiedon < started || r->modifiedon > now ||
			(!r->version_null && r->version > last);
		if (!r->modifiedon_null && r->modifiedon < oldest)
			oldest = r->modifiedon;
	}
	if (!forged)
		forged = rs_versions_forged(td->tg_newtable, RelationGetDescr(td->tg_relation),
									rs_column(RelationGetDescr(td->tg_relation), "modifiedon", true,
											  td->tg_relation), here,
									rs_origin_number(td, 3));
	if (!forged && !rs_shadowed_by_tombstone(table, here, rows, n, oldest))
	{
		rs_journal_write(table, 'i', here, rs_uuid_array(rows, NULL, n), rs_version_array(rows, NULL, n), NULL);
		return;
	}
	saved = rs_enter_owner();
	stamp_inserted(td, table, pkcol, here, rs_origin_number(td, 3));
	rs_leave_owner(saved);
}

static bool
same_keys(Row *a, Row *b, int n)
{
	for (int i = 0; i < n; i++)
		if (memcmp(&a[i].pk, &b[i].pk, sizeof(pg_uuid_t)) != 0)
			return false;
	return true;
}

static void
after_update(const char *table, Row *olds, int nold, Row *news, int nnew)
{
	int		   *pick = palloc(sizeof(int) * Max(nnew, 1));
	int			n = 0;

	if (nold == 1 && nnew == 1)
	{
		if (news[0].version_null != olds[0].version_null ||
			news[0].version != olds[0].version ||
			memcmp(&news[0].pk, &olds[0].pk, sizeof(pg_uuid_t)) != 0)
			pick[n++] = 0;
	}
	else if (nold == nnew && same_keys(olds, news, nold))
	{
		/* the transition tables hold each updated row's old and new tuple side by side */
		for (int i = 0; i < nnew; i++)
			if (news[i].version_null != olds[i].version_null ||
				news[i].version != olds[i].version)
				pick[n++] = i;
	}
	else
	{
		/* changed rows: whose (key, version) is not among the old rows' */
		HASHCTL		ctl;
		HTAB	   *seen;

		ctl.keysize = sizeof(RowKey);
		ctl.entrysize = sizeof(RowKey);
		ctl.hcxt = CurrentMemoryContext;
		seen = hash_create("regionsync old rows", Max(nold, 16), &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		for (int i = 0; i < nold; i++)
		{
			RowKey		k;

			memset(&k, 0, sizeof(k));
			k.pk = olds[i].pk;
			k.version = olds[i].version_null ? PG_INT64_MIN : olds[i].version;
			hash_search(seen, &k, HASH_ENTER, NULL);
		}
		for (int i = 0; i < nnew; i++)
		{
			RowKey		k;
			bool		found;

			memset(&k, 0, sizeof(k));
			k.pk = news[i].pk;
			k.version = news[i].version_null ? PG_INT64_MIN : news[i].version;
			hash_search(seen, &k, HASH_FIND, &found);
			if (!found)
				pick[n++] = i;
		}
		hash_destroy(seen);
	}
	if (n > 0)
		rs_journal_by_origin(table, 'u', news, pick, n);
}

/* Journal a delete: one entry per origin, each key with a fresh version (a delete has no
 * row version of its own; the version orders it in the journal). */
static void
journal_deletes(const char *table, Row *rows, int n)
{
	int		   *pick = palloc(sizeof(int) * Max(n, 1));
	Oid			seq = rs_version_sequence();

	for (int i = 0; i < n; i++)
	{
		pick[i] = i;
		rows[i].version = nextval_internal(seq, false);
		rows[i].version_null = false;
	}
	rs_journal_by_origin(table, 'd', rows, pick, n);
}

static void
after_delete(const char *table, const char *here, const char *applying, Row *rows, int n)
{
	if (applying == NULL)
	{
		/* local: tombstones newer than the rows they end (whatever the clocks say); an
		 * upsert in SQL, which waits for and merges with a concurrent one */
		Datum		args[4];
		Datum	   *mods = palloc(sizeof(Datum) * Max(n, 1));
		bool	   *mnulls = palloc(sizeof(bool) * Max(n, 1));
		int			dims[1] = {n};
		int			lbs[1] = {1};
		AsOwner		saved;

		for (int i = 0; i < n; i++)
		{
			mods[i] = TimestampTzGetDatum(rows[i].modifiedon);
			mnulls[i] = rows[i].modifiedon_null;
			rows[i].origin = (char *) here;
		}
		args[0] = CStringGetTextDatum(table);
		args[1] = CStringGetTextDatum(here);
		args[2] = rs_uuid_array(rows, NULL, n);
		args[3] = PointerGetDatum(construct_md_array(mods, mnulls, 1, dims, lbs, TIMESTAMPTZOID,
													 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		saved = rs_enter_owner();
		rs_run_plan(rs_tombstone_plan, args, NULL);
		rs_leave_owner(saved);
	}
	else
	{
		/* apply (or retract): the deletion's origin was recorded by the caller in
		 * sync.tombstone; without one, the applying origin */
		Relation	trel = table_open(rs_sync_relation("tombstone"), AccessShareLock);
		Relation	pkey = index_open(rs_sync_relation("tombstone_pkey"), AccessShareLock);
		TupleDesc	desc = RelationGetDescr(trel);
		int			a_org = rs_column(desc, "origin", true, trel);
		Datum		table_text = CStringGetTextDatum(table);
		TupleTableSlot *slot = table_slot_create(trel, NULL);
		char	   *fallback = pstrdup(applying);
		IndexScanDesc scan;

		PushActiveSnapshot(GetTransactionSnapshot());
		scan = rs_index_beginscan(trel, pkey, GetActiveSnapshot(), 2, 0);
		for (int i = 0; i < n; i++)
		{
			bool		isnull = true;
			Datum		origin = (Datum) 0;

			if (rs_tombstone_of(scan, table_text, &rows[i].pk, slot))
				origin = slot_getattr(slot, a_org, &isnull);
			rows[i].origin = isnull ? fallback : TextDatumGetCString(origin);
		}
		index_endscan(scan);
		PopActiveSnapshot();
		ExecDropSingleTupleTableSlot(slot);
		index_close(pkey, NoLock);
		table_close(trel, NoLock);
	}
	journal_deletes(table, rows, n);
}

/*
 * capture_after(region, key column, lock space[, origin number]): the journal of a statement, AFTER
 * INSERT / UPDATE / DELETE FOR EACH STATEMENT with its transition tables.
 */
Datum
capture_after(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	const char *table;
	const char *pkcol;
	int32		space;
	const char *applying = NULL;
	const char *here;
	int			a_pk,
				a_ver,
				a_mod,
				a_org,
				a_chg;
	Row		   *news = NULL,
			   *olds = NULL;
	int			nnew = 0,
				nold = 0;

	rs_check_trigger(fcinfo, "capture_after", 3);
	if (!TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event))
		ereport(ERROR, (errmsg("regionsync: capture_after() fires AFTER … FOR EACH STATEMENT")));
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	table = RelationGetRelationName(rel);
	pkcol = td->tg_trigger->tgargs[1];
	space = pg_strtoint32(td->tg_trigger->tgargs[2]);

	if (rs_is_apply_member())
	{
		const char *journal = rs_apply_setting("regionsync.journal");

		/* an apply that forwards nothing (mesh member, spoke) journals nothing */
		if (journal != NULL && strcmp(journal, "off") == 0)
			return PointerGetDatum(NULL);
		applying = rs_apply_setting("regionsync.origin");
		if (applying != NULL)
			applying = pstrdup(applying);
	}
	a_pk = rs_column(desc, pkcol, true, rel);
	a_ver = rs_column(desc, "versionnumber", true, rel);
	a_mod = rs_column(desc, "modifiedon", true, rel);
	a_org = rs_column(desc, "sync_origin", true, rel);
	a_chg = rs_column(desc, "sync_changed", false, rel);
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		if (td->tg_newtable == NULL)
			ereport(ERROR, (errmsg("regionsync: capture_after() needs REFERENCING NEW TABLE")));
		news = rs_read_rows(td->tg_newtable, desc, a_pk, a_ver, a_mod, a_org, a_chg, &nnew);
	}
	if (TRIGGER_FIRED_BY_DELETE(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		if (td->tg_oldtable == NULL)
			ereport(ERROR, (errmsg("regionsync: capture_after() needs REFERENCING OLD TABLE")));
		olds = rs_read_rows(td->tg_oldtable, desc, a_pk, a_ver, a_mod, a_org, 0, &nold);
	}
	if (nnew == 0 && nold == 0)
		return PointerGetDatum(NULL);

	here = rs_region_name(td->tg_trigger->tgargs[0]);
	/* an applied change is journaled as the peer's (a forwarding hub): a row's newest
	 * version may be another region's, whose own journal entry forwards that */
	if (applying != NULL)
		for (int i = 0; i < nnew; i++)
			news[i].origin = (char *) applying;
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		after_insert(td, table, pkcol, space, here, applying, news, nnew);
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		after_update(table, olds, nold, news, nnew);
	else
		after_delete(table, here, applying, olds, nold);
	return PointerGetDatum(NULL);
}
