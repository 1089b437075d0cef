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
 *     the forgery checks, the key-stripe locks) and write the journal with one saved
 *     plan per statement. Rare paths (a forged or tombstone-shadowed insert) run the same
 *     SQL as the PL/pgSQL version, over the transition table.
 *
 * Security: nothing here reads a setting unless the current user is a member of
 * regionsync_apply, so an application role cannot skip capture or forge provenance with
 * set_config. The journal and tombstones are written as the owner of schema `sync` (as
 * the SECURITY DEFINER PL/pgSQL functions are), with search_path pinned, and only for
 * tables in schema public. Like those, the functions live in schema sync, which
 * application roles cannot use, and EXECUTE is revoked from PUBLIC.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/fmgroids.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"
#include "utils/memutils.h"
#include "utils/uuid.h"
#include "utils/xid8.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(capture_before_update);
PG_FUNCTION_INFO_V1(capture_after);

#define SAFE_SEARCH_PATH "pg_catalog, pg_temp"
#define SEQ_NAME "regionsync_versionnumber_seq"

/* ---------------------------------------------------------------- helpers */

static bool
is_apply_member(void)
{
	Oid			apply = get_role_oid("regionsync_apply", true);

	return OidIsValid(apply) && is_member_of_role(GetUserId(), apply);
}

/* A setting read only for apply members: NULL when unset or empty. */
static const char *
apply_setting(const char *name)
{
	const char *v = GetConfigOption(name, true, false);

	return (v == NULL || v[0] == '\0') ? NULL : v;
}

static Oid
version_sequence(void)
{
	Oid			seq = get_relname_relid(SEQ_NAME, PG_PUBLIC_NAMESPACE);

	if (!OidIsValid(seq))
		ereport(ERROR, (errmsg("regionsync: sequence public.%s is missing; run `regionsync migrate`",
							   SEQ_NAME)));
	return seq;
}

static int
column(TupleDesc desc, const char *name, bool required, Relation rel)
{
	int			attno = SPI_fnumber(desc, name);

	if (attno <= 0 && required)
		ereport(ERROR, (errmsg("regionsync: table %s has no column %s; it cannot be tracked",
							   RelationGetRelationName(rel), name)));
	return attno;
}

static void
check_trigger(FunctionCallInfo fcinfo, const char *fn, int nargs)
{
	TriggerData *td;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR, (errmsg("regionsync: %s() is a trigger function", fn)));
	td = (TriggerData *) fcinfo->context;
	if (td->tg_trigger->tgnargs != nargs)
		ereport(ERROR, (errmsg("regionsync: %s() takes %d trigger arguments", fn, nargs)));
	if (RelationGetNamespace(td->tg_relation) != PG_PUBLIC_NAMESPACE)
		ereport(ERROR, (errmsg("regionsync: %s() tracks tables in schema public only", fn)));
}

/* Equal as the row comparison `NEW IS NOT DISTINCT FROM OLD` sees it: bytes first, then
 * the type's own equality (1.0 = 1.00), for types that have one. */
static bool
same_value(Form_pg_attribute att, Datum a, bool anull, Datum b, bool bnull)
{
	TypeCacheEntry *tc;

	if (anull || bnull)
		return anull && bnull;
	if (datumIsEqual(a, b, att->attbyval, att->attlen))
		return true;
	if (att->attlen == -1)
	{
		struct varlena *va = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(a));
		struct varlena *vb = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(b));

		if (VARSIZE_ANY_EXHDR(va) == VARSIZE_ANY_EXHDR(vb) &&
			memcmp(VARDATA_ANY(va), VARDATA_ANY(vb), VARSIZE_ANY_EXHDR(va)) == 0)
			return true;
		a = PointerGetDatum(va);
		b = PointerGetDatum(vb);
	}
	tc = lookup_type_cache(att->atttypid, TYPECACHE_EQ_OPR_FINFO);
	if (!OidIsValid(tc->eq_opr_finfo.fn_oid))
		return false;
	return DatumGetBool(FunctionCall2Coll(&tc->eq_opr_finfo, att->attcollation, a, b));
}

static const char *region_name(const char *arg);

typedef struct BeforeCache
{
	Oid			relid;
	int			natts;
	int			a_ver,
				a_mod,
				a_org,
				a_cre;
	Oid			seq;
} BeforeCache;

/* ------------------------------------------------- BEFORE UPDATE, per row */

/*
 * capture_before_update(region): versions and provenance of an updated row.
 *
 * A no-op update (nothing but system columns differ) keeps its version and gets no
 * journal entry. Otherwise the row takes the next version; a local write also takes the
 * time (never older than the version it replaces, whatever the clocks say) and this
 * region as its origin. Apply (a regionsync_apply member with regionsync.origin set)
 * brings its own time and origin; with regionsync.stamped on it brings its version too
 * and the row is left alone.
 */
Datum
capture_before_update(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	newt,
				out;
	const char *applying = NULL;
	int			a_ver,
				a_mod,
				a_org,
				a_cre;
	Datum	   *ov,
			   *nv;
	bool	   *on,
			   *nn;
	bool		changed = false;
	Oid			seq;

	check_trigger(fcinfo, "capture_before_update", 1);
	if (!TRIGGER_FIRED_BEFORE(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		ereport(ERROR, (errmsg("regionsync: capture_before_update() fires BEFORE UPDATE FOR EACH ROW")));
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	newt = td->tg_newtuple;

	if (is_apply_member())
	{
		const char *stamped = apply_setting("regionsync.stamped");

		if (stamped != NULL && strcmp(stamped, "on") == 0)
			return PointerGetDatum(newt);
		applying = apply_setting("regionsync.origin");
	}
	{
		/* per statement (the trigger's FmgrInfo lives that long): columns and sequence */
		BeforeCache *c = fcinfo->flinfo->fn_extra;

		if (c == NULL || c->relid != RelationGetRelid(rel) || c->natts != desc->natts)
		{
			c = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(BeforeCache));
			c->relid = RelationGetRelid(rel);
			c->natts = desc->natts;
			c->a_ver = column(desc, "versionnumber", true, rel) - 1;
			c->a_mod = column(desc, "modifiedon", true, rel) - 1;
			c->a_org = column(desc, "sync_origin", true, rel) - 1;
			c->a_cre = column(desc, "createdon", false, rel) - 1;
			c->seq = version_sequence();
			fcinfo->flinfo->fn_extra = c;
		}
		a_ver = c->a_ver;
		a_mod = c->a_mod;
		a_org = c->a_org;
		a_cre = c->a_cre;
		seq = c->seq;
	}

	ov = palloc(sizeof(Datum) * desc->natts);
	nv = palloc(sizeof(Datum) * desc->natts);
	on = palloc(sizeof(bool) * desc->natts);
	nn = palloc(sizeof(bool) * desc->natts);
	heap_deform_tuple(td->tg_trigtuple, desc, ov, on);
	heap_deform_tuple(newt, desc, nv, nn);

	/* the system columns a local write cannot set: as they were */
	nv[a_ver] = ov[a_ver];
	nn[a_ver] = on[a_ver];
	if (applying == NULL)
	{
		nv[a_mod] = ov[a_mod];
		nn[a_mod] = on[a_mod];
		nv[a_org] = ov[a_org];
		nn[a_org] = on[a_org];
		if (a_cre >= 0)
		{
			nv[a_cre] = ov[a_cre];
			nn[a_cre] = on[a_cre];
		}
	}
	for (int i = 0; i < desc->natts && !changed; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped)
			changed = !same_value(att, ov[i], on[i], nv[i], nn[i]);
	}
	if (changed)
	{
		nv[a_ver] = Int64GetDatum(nextval_internal(seq, true));
		nn[a_ver] = false;
		if (applying == NULL)
		{
			TimestampTz now = GetCurrentTimestamp();
			TimestampTz prev = DatumGetTimestampTz(ov[a_mod]);

			/* never older than the version it replaces, whatever the clocks say */
			if (!on[a_mod] && TIMESTAMP_IS_NOEND(prev))
				now = prev;
			else if (!on[a_mod] && !TIMESTAMP_NOT_FINITE(prev) && prev >= now)
				now = prev + 1;
			nv[a_mod] = TimestampTzGetDatum(now);
			nn[a_mod] = false;
			nv[a_org] = CStringGetTextDatum(region_name(td->tg_trigger->tgargs[0]));
			nn[a_org] = false;
		}
	}
	out = heap_form_tuple(desc, nv, nn);
	out->t_data->t_ctid = newt->t_data->t_ctid;
	out->t_self = newt->t_self;
	out->t_tableOid = newt->t_tableOid;
	return PointerGetDatum(out);
}

/* --------------------------------------------- AFTER, per statement */

typedef struct Row
{
	pg_uuid_t	pk;
	int64		version;
	bool		version_null;
	TimestampTz modifiedon;
	bool		modifiedon_null;
	char	   *origin;			/* NULL when the column is null */
} Row;

typedef struct RowKey
{
	pg_uuid_t	pk;
	int64		version;
} RowKey;

/* The statement's rows, from a transition table, in its order. */
static Row *
read_rows(Tuplestorestate *ts, TupleDesc desc, int a_pk, int a_ver, int a_mod, int a_org,
		  int *count)
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

static SPIPlanPtr
keep(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "regionsync: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "regionsync: SPI_keepplan failed");
	return plan;
}

static SPIPlanPtr tombstone_plan = NULL;	/* the tombstones of a local delete */

static void
prepare_plans(void)
{
	Oid			t[4] = {TEXTOID, TEXTOID, UUIDARRAYOID, TIMESTAMPTZARRAYOID};

	if (tombstone_plan != NULL)
		return;
	tombstone_plan = keep(
		"INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin)"
		" SELECT $1, u.pk, greatest(clock_timestamp(), u.m + interval '1 microsecond'), $2"
		" FROM unnest($3, $4) AS u(pk, m)"
		" ON CONFLICT (tablename, pk) DO UPDATE"
		"   SET modifiedon = greatest(EXCLUDED.modifiedon, tb.modifiedon + interval '1 microsecond'),"
		"       origin = EXCLUDED.origin", 4, t);
}

static Oid
sync_relation(const char *name)
{
	Oid			rel = get_relname_relid(name, get_namespace_oid("sync", false));

	if (!OidIsValid(rel))
		ereport(ERROR, (errmsg("regionsync: sync.%s is missing; run `regionsync migrate`", name)));
	return rel;
}

/*
 * One journal entry, written as the SQL INSERT with the column defaults would write it
 * (id from its sequence, txid the top transaction's, changed_at the clock), without an
 * executor: planning and starting one per statement cost more than the write itself.
 * sync.change_set has no triggers, checks or expression indexes to skip; its only
 * writers are these triggers and their PL/pgSQL twins.
 */
static void
journal_write(const char *table, char op, const char *origin, Datum pks, Datum versions)
{
	Relation	rel = table_open(sync_relation("change_set"), RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc0(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	char		opstr[2] = {op, '\0'};
	HeapTuple	tup;

	memset(nulls, true, sizeof(bool) * desc->natts);
#define SET(col, value) do { int a_ = column(desc, col, true, rel); \
		values[a_ - 1] = (value); nulls[a_ - 1] = false; } while (0)
	SET("id", Int64GetDatum(nextval_internal(sync_relation("change_set_id_seq"), false)));
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
#undef SET
	tup = heap_form_tuple(desc, values, nulls);
	CatalogTupleInsert(rel, tup);
	table_close(rel, NoLock);
}

static Datum
uuid_array(Row *rows, int *pick, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = UUIDPGetDatum(&rows[pick ? pick[i] : i].pk);
	return PointerGetDatum(construct_array(elems, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
}

static Datum
version_array(Row *rows, int *pick, int n)
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

static void
run_plan(SPIPlanPtr plan, Datum *args, const char *nulls)
{
	int			rc = SPI_execute_plan(plan, args, nulls, false, 0);

	if (rc < 0)
		elog(ERROR, "regionsync: journal write failed: %s", SPI_result_code_string(rc));
}

/* One journal entry per origin among the picked rows (apply may mix origins). */
static void
journal_by_origin(const char *table, char op, Row *rows, int *pick, int n)
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

			if (!done[j] && ((origin == NULL && other == NULL) ||
							 (origin != NULL && other != NULL && strcmp(origin, other) == 0)))
			{
				done[j] = true;
				group[g++] = pick[j];
			}
		}
		journal_write(table, op, origin, uuid_array(rows, group, g), version_array(rows, group, g));
	}
}

static int64
sequence_last_value(void)
{
	LOCAL_FCINFO(call, 1);
	Datum		v;

	InitFunctionCallInfoData(*call, NULL, 1, InvalidOid, NULL, NULL);
	call->args[0].value = ObjectIdGetDatum(version_sequence());
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
stamp_inserted(TriggerData *td, const char *table, const char *pkcol, const char *here)
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
	appendStringInfo(&sql,
					 "UPDATE public.%s t SET sync_origin = $1, "
					 "modifiedon = greatest(clock_timestamp(), "
					 "  (SELECT tb.modifiedon + interval '1 microsecond' FROM sync.tombstone tb "
					 "   WHERE tb.tablename = $2 AND tb.pk = n.%s)), "
					 "versionnumber = nextval('public.regionsync_versionnumber_seq') "
					 "FROM %s n WHERE t.%s = n.%s", t, pk, nr, pk, pk);
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

/* The tombstone of (table, key) into slot, through a scan of sync.tombstone_pkey. */
static bool
tombstone_of(IndexScanDesc scan, Datum table_text, pg_uuid_t *pk, TupleTableSlot *slot)
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
static bool
at_least_as_new(TimestampTz tb_time, Datum tb_origin, TimestampTz row_time, Datum here)
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
static bool
shadowed_by_tombstone(const char *table, const char *here, Row *rows, int n,
					  TimestampTz oldest)
{
	Relation	trel = table_open(sync_relation("tombstone"), AccessShareLock);
	Relation	irel = index_open(sync_relation("tombstone_modifiedon"), AccessShareLock);
	TupleDesc	desc = RelationGetDescr(trel);
	int			a_tab = column(desc, "tablename", true, trel);
	int			a_pk = column(desc, "pk", true, trel);
	int			a_mod = column(desc, "modifiedon", true, trel);
	int			a_org = column(desc, "origin", true, trel);
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
	scan = index_beginscan(trel, irel, GetActiveSnapshot(), 1, 0);
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
		hit = at_least_as_new(DatumGetTimestampTz(slot_getattr(slot, a_mod, &isnull)),
							  slot_getattr(slot, a_org, &isnull), r->modifiedon, here_text);
	}
	index_endscan(scan);
	index_close(irel, NoLock);

	if (probe)
	{
		Relation	pkey = index_open(sync_relation("tombstone_pkey"), AccessShareLock);

		scan = index_beginscan(trel, pkey, GetActiveSnapshot(), 2, 0);
		for (int i = 0; i < n && !hit; i++)
		{
			if (tombstone_of(scan, table_text, &rows[i].pk, slot))
			{
				bool		isnull;

				hit = at_least_as_new(DatumGetTimestampTz(slot_getattr(slot, a_mod, &isnull)),
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

/* Run the rare paths' SQL as the owner of the journal, with a search_path nobody else
 * chose; an error aborts the (sub)transaction, which restores both. */
typedef struct AsOwner
{
	Oid			user;
	int			sec;
	int			nest;
} AsOwner;

static Oid sync_owner(void);

static AsOwner
enter_owner(void)
{
	AsOwner		saved;

	GetUserIdAndSecContext(&saved.user, &saved.sec);
	SetUserIdAndSecContext(sync_owner(), saved.sec | SECURITY_LOCAL_USERID_CHANGE);
	saved.nest = NewGUCNestLevel();
	(void) set_config_option("search_path", SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "regionsync: SPI_connect failed");
	prepare_plans();
	return saved;
}

static void
leave_owner(AsOwner saved)
{
	SPI_finish();
	AtEOXact_GUC(true, saved.nest);
	SetUserIdAndSecContext(saved.user, saved.sec);
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
		journal_by_origin(table, 'i', rows, pick, n);
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
	if (!forged && !shadowed_by_tombstone(table, here, rows, n, oldest))
	{
		journal_write(table, 'i', here, uuid_array(rows, NULL, n), version_array(rows, NULL, n));
		return;
	}
	saved = enter_owner();
	stamp_inserted(td, table, pkcol, here);
	leave_owner(saved);
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
		journal_by_origin(table, 'u', news, pick, n);
}

/* Journal a delete: one entry per origin, each key with a fresh version (a delete has no
 * row version of its own; the version orders it in the journal). */
static void
journal_deletes(const char *table, Row *rows, int n)
{
	int		   *pick = palloc(sizeof(int) * Max(n, 1));
	Oid			seq = version_sequence();

	for (int i = 0; i < n; i++)
	{
		pick[i] = i;
		rows[i].version = nextval_internal(seq, false);
		rows[i].version_null = false;
	}
	journal_by_origin(table, 'd', rows, pick, n);
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
		args[2] = uuid_array(rows, NULL, n);
		args[3] = PointerGetDatum(construct_md_array(mods, mnulls, 1, dims, lbs, TIMESTAMPTZOID,
													 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		saved = enter_owner();
		run_plan(tombstone_plan, args, NULL);
		leave_owner(saved);
	}
	else
	{
		/* apply (or retract): the deletion's origin was recorded by the caller in
		 * sync.tombstone; without one, the applying origin */
		Relation	trel = table_open(sync_relation("tombstone"), AccessShareLock);
		Relation	pkey = index_open(sync_relation("tombstone_pkey"), AccessShareLock);
		TupleDesc	desc = RelationGetDescr(trel);
		int			a_org = column(desc, "origin", true, trel);
		Datum		table_text = CStringGetTextDatum(table);
		TupleTableSlot *slot = table_slot_create(trel, NULL);
		char	   *fallback = pstrdup(applying);
		IndexScanDesc scan;

		PushActiveSnapshot(GetTransactionSnapshot());
		scan = index_beginscan(trel, pkey, GetActiveSnapshot(), 2, 0);
		for (int i = 0; i < n; i++)
		{
			bool		isnull = true;
			Datum		origin = (Datum) 0;

			if (tombstone_of(scan, table_text, &rows[i].pk, slot))
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

/* The region's name: the trigger's argument, or sync.local_region() before it had one. */
static const char *
region_name(const char *arg)
{
	const char *region;

	if (arg[0] != '\0')
		return arg;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "regionsync: SPI_connect failed");
	if (SPI_execute("SELECT sync.local_region()", true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "regionsync: could not read this database's region");
	region = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	region = MemoryContextStrdup(CurTransactionContext, region);
	SPI_finish();
	return region;
}

static Oid
sync_owner(void)
{
	Oid			nsp = get_namespace_oid("sync", false);
	HeapTuple	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "regionsync: schema sync not found");
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * capture_after(region, key column, lock space): the journal of a statement, AFTER
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
				a_org;
	Row		   *news = NULL,
			   *olds = NULL;
	int			nnew = 0,
				nold = 0;

	check_trigger(fcinfo, "capture_after", 3);
	if (!TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event))
		ereport(ERROR, (errmsg("regionsync: capture_after() fires AFTER … FOR EACH STATEMENT")));
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	table = RelationGetRelationName(rel);
	pkcol = td->tg_trigger->tgargs[1];
	space = pg_strtoint32(td->tg_trigger->tgargs[2]);

	if (is_apply_member())
	{
		const char *journal = apply_setting("regionsync.journal");

		/* an apply that forwards nothing (mesh member, spoke) journals nothing */
		if (journal != NULL && strcmp(journal, "off") == 0)
			return PointerGetDatum(NULL);
		applying = apply_setting("regionsync.origin");
		if (applying != NULL)
			applying = pstrdup(applying);
	}
	a_pk = column(desc, pkcol, true, rel);
	a_ver = column(desc, "versionnumber", true, rel);
	a_mod = column(desc, "modifiedon", true, rel);
	a_org = column(desc, "sync_origin", true, rel);
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		if (td->tg_newtable == NULL)
			ereport(ERROR, (errmsg("regionsync: capture_after() needs REFERENCING NEW TABLE")));
		news = read_rows(td->tg_newtable, desc, a_pk, a_ver, a_mod, a_org, &nnew);
	}
	if (TRIGGER_FIRED_BY_DELETE(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		if (td->tg_oldtable == NULL)
			ereport(ERROR, (errmsg("regionsync: capture_after() needs REFERENCING OLD TABLE")));
		olds = read_rows(td->tg_oldtable, desc, a_pk, a_ver, a_mod, a_org, &nold);
	}
	if (nnew == 0 && nold == 0)
		return PointerGetDatum(NULL);

	here = region_name(td->tg_trigger->tgargs[0]);
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		after_insert(td, table, pkcol, space, here, applying, news, nnew);
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		after_update(table, olds, nold, news, nnew);
	else
		after_delete(table, here, applying, olds, nold);
	return PointerGetDatum(NULL);
}
