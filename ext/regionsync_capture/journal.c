/* journal.c: the statement's rows from its transition tables, and journal entries. */
#include "capture.h"
/* The statement's rows, from a transition table, in its order. */
Row *
rs_read_rows(Tuplestorestate *ts, TupleDesc desc, int a_pk, int a_ver, int a_mod, int a_org,
			 int a_chg, int *count)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	int			cap = 16,
				n = 0;
	Row		   *rows = palloc(sizeof(Row) * cap);
	char	   *last = NULL;

	tuplestore_rescan(ts);
	while (tuplestore_gettupleslot(ts, true, false, slot))
	{
		bool		isnull;
		Datum		d;
		Row		   *r;

		if (n == cap)
		{
			cap *= 2;
			rows = repalloc_huge(rows, sizeof(Row) * cap);
		}
		r = &rows[n++];
		d = slot_getattr(slot, a_pk, &isnull);
		if (isnull)
			memset(&r->pk, 0, sizeof(r->pk));
		else
			memcpy(&r->pk, DatumGetUUIDP(d), sizeof(r->pk));
		d = slot_getattr(slot, a_ver, &r->version_null);
		r->version = r->version_null ? 0 : DatumGetInt64(d);
		r->cols_null = true;
		r->cols = 0;
		if (a_chg > 0)
		{
			d = slot_getattr(slot, a_chg, &r->cols_null);
			r->cols = r->cols_null ? 0 : DatumGetInt64(d);
		}
		d = slot_getattr(slot, a_mod, &r->modifiedon_null);
		r->modifiedon = r->modifiedon_null ? 0 : DatumGetTimestampTz(d);
		d = slot_getattr(slot, a_org, &isnull);
		if (isnull)
			r->origin = NULL;
		else
		{
			/* one string per distinct origin (a local statement has one) */
			text	   *t = DatumGetTextPP(d);
			int			len = VARSIZE_ANY_EXHDR(t);

			if (last == NULL || (int) strlen(last) != len ||
				memcmp(last, VARDATA_ANY(t), len) != 0)
				last = text_to_cstring(t);
			r->origin = last;
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	*count = n;
	return rows;
}

Datum
rs_uuid_array(Row *rows, int *pick, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = UUIDPGetDatum(&rows[pick ? pick[i] : i].pk);
	return PointerGetDatum(construct_array(elems, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
}

Datum
rs_version_array(Row *rows, int *pick, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		Row		   *r = &rows[pick ? pick[i] : i];

		elems[i] = Int64GetDatum(r->version);
		nulls[i] = r->version_null;
	}
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * One journal entry, written as the SQL INSERT with the column defaults would write it
 * (id from its sequence, txid the top transaction's, changed_at the clock), without an
 * executor: planning and starting one per statement cost more than the write itself.
 * sync.change_set has no triggers, checks or expression indexes to skip; its only
 * writers are these triggers and their PL/pgSQL twins.
 */
/*
 * Whether a local insert set version data itself: a base other than its own row version,
 * a column version, a change mask. Such rows are stamped (after.c), like a made-up time.
 */
bool
rs_versions_forged(Tuplestorestate *ts, TupleDesc desc, int a_mod, const char *here,
				   int number)
{
	int			a_base = 0,
				a_chg = 0;
	int		   *vatts = palloc(sizeof(int) * desc->natts);
	int			nv = 0;
	bool		forged = false;
	bool		numeric;
	TupleTableSlot *slot;

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		size_t		len = strlen(name);

		if (att->attisdropped)
			continue;
		if (strcmp(name, "sync_base") == 0)
			a_base = i + 1;
		else if (strcmp(name, "sync_changed") == 0)
			a_chg = i + 1;
		else if (len > 3 && strcmp(name + len - 3, "__v") == 0)
			vatts[nv++] = i + 1;
	}
	if (a_base == 0)
		return false;			/* no per-column versions on this table */
	numeric = rs_numeric_versions(desc, a_base - 1);
	slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	tuplestore_rescan(ts);
	while (!forged && tuplestore_gettupleslot(ts, true, false, slot))
	{
		bool		isnull;
		Datum		d = slot_getattr(slot, a_base, &isnull);
		Datum		m;
		bool		mnull;

		m = slot_getattr(slot, a_mod, &mnull);
		if (isnull || mnull)
		{
			forged = true;
			break;
		}
		if (numeric)
			forged = number < 0 ||
				DatumGetInt64(d) != rs_version_number(DatumGetTimestampTz(m), number);
		else
		{
			char	   *want = rs_version_text(DatumGetTimestampTz(m), here);
			text	   *got = DatumGetTextPP(d);

			forged = (size_t) VARSIZE_ANY_EXHDR(got) != strlen(want) ||
				memcmp(VARDATA_ANY(got), want, strlen(want)) != 0;
		}
		if (a_chg > 0)
		{
			slot_getattr(slot, a_chg, &isnull);
			forged |= !isnull;
		}
		for (int j = 0; j < nv && !forged; j++)
		{
			slot_getattr(slot, vatts[j], &isnull);
			forged = !isnull;
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	return forged;
}

void
rs_journal_write(const char *table, char op, const char *origin, Datum pks, Datum versions,
				 Row *first)
{
	Relation	rel = table_open(rs_sync_relation("change_set"), RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc0(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	char		opstr[2] = {op, '\0'};
	HeapTuple	tup;

	memset(nulls, true, sizeof(bool) * desc->natts);
#define SET(col, value) do { int a_ = rs_column(desc, col, true, rel); \
		values[a_ - 1] = (value); nulls[a_ - 1] = false; } while (0)
	SET("id", Int64GetDatum(nextval_internal(rs_sync_relation("change_set_id_seq"), false)));
	SET("tablename", CStringGetTextDatum(table));
	SET("op", PointerGetDatum(cstring_to_text(opstr)));
	if (origin != NULL)
		SET("origin", CStringGetTextDatum(origin));
	else
		ereport(ERROR, (errcode(ERRCODE_NOT_NULL_VIOLATION),
						errmsg("regionsync: a changed row of %s has no sync_origin", table)));
	SET("txid", FullTransactionIdGetDatum(GetTopFullTransactionId()));
	SET("changed_at", TimestampTzGetDatum(GetCurrentTimestamp()));
	SET("pks", pks);
	SET("versions", versions);
	if (op == 'u' && first != NULL && !first->cols_null &&
		rs_column(desc, "cols", false, rel) > 0)
		SET("cols", Int64GetDatum(first->cols));
#undef SET
	tup = heap_form_tuple(desc, values, nulls);
	CatalogTupleInsert(rel, tup);
	table_close(rel, NoLock);
}

/* One journal entry per origin and change mask among the picked rows (apply may mix
 * origins; a statement's rows may change different columns). */
void
rs_journal_by_origin(const char *table, char op, Row *rows, int *pick, int n)
{
	int		   *group = palloc(sizeof(int) * Max(n, 1));
	bool	   *done = palloc0(sizeof(bool) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		const char *origin;
		int			g = 0;

		if (done[i])
			continue;
		origin = rows[pick[i]].origin;
		for (int j = i; j < n; j++)
		{
			const char *other = rows[pick[j]].origin;

			if (!done[j] && rows[pick[j]].cols_null == rows[pick[i]].cols_null &&
				rows[pick[j]].cols == rows[pick[i]].cols &&
				((origin == NULL && other == NULL) ||
				 (origin != NULL && other != NULL && strcmp(origin, other) == 0)))
			{
				done[j] = true;
				group[g++] = pick[j];
			}
		}
		rs_journal_write(table, op, origin, rs_uuid_array(rows, group, g), rs_version_array(rows, group, g),
						 &rows[group[0]]);
	}
}
