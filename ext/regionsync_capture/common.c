/* common.c: who is writing, where things are, and running SQL as the owner of sync. */
#include "capture.h"

SPIPlanPtr rs_tombstone_plan = NULL;

bool
rs_is_apply_member(void)
{
	Oid			apply = get_role_oid("regionsync_apply", true);

	return OidIsValid(apply) && is_member_of_role(GetUserId(), apply);
}

/* A setting read only for apply members: NULL when unset or empty. */
const char *
rs_apply_setting(const char *name)
{
	const char *v = GetConfigOption(name, true, false);

	return (v == NULL || v[0] == '\0') ? NULL : v;
}

Oid
rs_version_sequence(void)
{
	Oid			seq = get_relname_relid(SEQ_NAME, PG_PUBLIC_NAMESPACE);

	if (!OidIsValid(seq))
		ereport(ERROR, (errmsg("regionsync: sequence public.%s is missing; run `regionsync migrate`",
							   SEQ_NAME)));
	return seq;
}

int
rs_column(TupleDesc desc, const char *name, bool required, Relation rel)
{
	int			attno = SPI_fnumber(desc, name);

	if (attno <= 0 && required)
		ereport(ERROR, (errmsg("regionsync: table %s has no column %s; it cannot be tracked",
							   RelationGetRelationName(rel), name)));
	return attno;
}

void
rs_check_trigger(FunctionCallInfo fcinfo, const char *fn, int nargs)
{
	TriggerData *td;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("regionsync: %s() is a trigger function", fn)));
	td = (TriggerData *) fcinfo->context;
	/* triggers made since migration 0021 add the region's origin number as the last
	 * argument; those made before (text versions) still run until `regionsync migrate` */
	if (td->tg_trigger->tgnargs != nargs && td->tg_trigger->tgnargs != nargs + 1)
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
						errmsg("regionsync: %s() takes %d or %d trigger arguments", fn, nargs,
							   nargs + 1)));
	if (RelationGetNamespace(td->tg_relation) != PG_PUBLIC_NAMESPACE)
		ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						errmsg("regionsync: %s() tracks tables in schema public only", fn)));
}

Oid
rs_sync_relation(const char *name)
{
	Oid			rel = get_relname_relid(name, get_namespace_oid("sync", false));

	if (!OidIsValid(rel))
		ereport(ERROR, (errmsg("regionsync: sync.%s is missing; run `regionsync migrate`", name)));
	return rel;
}

/* The region's name: the trigger's argument, or sync.local_region() before it had one. */
const char *
rs_region_name(const char *arg)
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

/* The region's origin number: trigger argument argno, or sync.local_origin() where the
 * trigger was made before the region had one. -1 where the trigger predates numbers. */
int
rs_origin_number(TriggerData *td, int argno)
{
	const char *arg;
	int			number;

	if (td->tg_trigger->tgnargs <= argno)
		return -1;
	arg = td->tg_trigger->tgargs[argno];
	if (arg[0] != '\0')
		return pg_strtoint32(arg);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "regionsync: SPI_connect failed");
	if (SPI_execute("SELECT sync.local_origin()", true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "regionsync: could not read this database's origin number");
	number = pg_strtoint32(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();
	return number;
}

/* Whether the table's versions are numbers (0021) rather than text (0018): a table is
 * retyped by `regionsync migrate`, which may run after the new library is installed. */
bool
rs_numeric_versions(TupleDesc desc, int a_base)
{
	return a_base >= 0 && TupleDescAttr(desc, a_base)->atttypid == INT8OID;
}

Oid
rs_sync_owner(void)
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

SPIPlanPtr
rs_keep(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "regionsync: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "regionsync: SPI_keepplan failed");
	return plan;
}

void
rs_prepare_plans(void)
{
	Oid			t[4] = {TEXTOID, TEXTOID, UUIDARRAYOID, TIMESTAMPTZARRAYOID};

	if (rs_tombstone_plan != NULL)
		return;
	rs_tombstone_plan = rs_keep(
		"INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin)"
		" SELECT $1, u.pk, greatest(clock_timestamp(), u.m + interval '1 microsecond'), $2"
		" FROM unnest($3, $4) AS u(pk, m)"
		" ON CONFLICT (tablename, pk) DO UPDATE"
		"   SET modifiedon = greatest(EXCLUDED.modifiedon, tb.modifiedon + interval '1 microsecond'),"
		"       origin = EXCLUDED.origin", 4, t);
}

AsOwner
rs_enter_owner(void)
{
	AsOwner		saved;

	GetUserIdAndSecContext(&saved.user, &saved.sec);
	SetUserIdAndSecContext(rs_sync_owner(), saved.sec | SECURITY_LOCAL_USERID_CHANGE);
	saved.nest = NewGUCNestLevel();
	(void) set_config_option("search_path", SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "regionsync: SPI_connect failed");
	rs_prepare_plans();
	return saved;
}

void
rs_leave_owner(AsOwner saved)
{
	SPI_finish();
	AtEOXact_GUC(true, saved.nest);
	SetUserIdAndSecContext(saved.user, saved.sec);
}

void
rs_run_plan(SPIPlanPtr plan, Datum *args, const char *nulls)
{
	int			rc = SPI_execute_plan(plan, args, nulls, false, 0);

	if (rc < 0)
		elog(ERROR, "regionsync: journal write failed: %s", SPI_result_code_string(rc));
}
