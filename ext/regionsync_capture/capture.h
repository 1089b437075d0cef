/*
 * capture.h: what the units of regionsync_capture share. regionsync_capture.c says what
 * the extension is and why; each unit says what it does.
 */
#ifndef REGIONSYNC_CAPTURE_H
#define REGIONSYNC_CAPTURE_H

#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/sysattr.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_trigger.h"
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
#include "utils/inval.h"
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

/* PostgreSQL 18 gave index_beginscan() an instrumentation argument (NULL: none). The one
 * version difference of the C path, chosen by PG_VERSION_NUM at build time. */
#if PG_VERSION_NUM >= 180000
#define rs_index_beginscan(heap, index, snap, nkeys, norderbys) \
	index_beginscan((heap), (index), (snap), NULL, (nkeys), (norderbys))
#else
#define rs_index_beginscan(heap, index, snap, nkeys, norderbys) \
	index_beginscan((heap), (index), (snap), (nkeys), (norderbys))
#endif
#include "utils/xid8.h"

#define SAFE_SEARCH_PATH "pg_catalog, pg_temp"
#define SEQ_NAME "regionsync_versionnumber_seq"

typedef struct Row
{
	pg_uuid_t	pk;
	int64		version;
	bool		version_null;
	TimestampTz modifiedon;
	bool		modifiedon_null;
	char	   *origin;			/* NULL when the rs_column is null */
	int64		cols;			/* sync_changed: the columns the write changed */
	bool		cols_null;		/* NULL: all of them (an insert, a delete) */
} Row;

/* Run the rare paths' SQL as the owner of the journal, with a search_path nobody else
 * chose; an error aborts the (sub)transaction, which restores both. */
typedef struct AsOwner
{
	Oid			user;
	int			sec;
	int			nest;
} AsOwner;

/* the tombstones of a local delete, an upsert (common.c) */
extern SPIPlanPtr rs_tombstone_plan;

extern bool rs_is_apply_member(void);
extern const char * rs_apply_setting(const char *name);
extern Oid rs_version_sequence(void);
extern int rs_column(TupleDesc desc, const char *name, bool required, Relation rel);
extern void rs_check_trigger(FunctionCallInfo fcinfo, const char *fn, int nargs);
extern Oid rs_sync_relation(const char *name);
extern const char * rs_region_name(const char *arg);
extern int rs_origin_number(TriggerData *td, int argno);
extern bool rs_numeric_versions(TupleDesc desc, int a_base);
extern Oid rs_sync_owner(void);
extern SPIPlanPtr rs_keep(const char *sql, int nargs, Oid *types);
extern void rs_prepare_plans(void);
extern AsOwner rs_enter_owner(void);
extern void rs_leave_owner(AsOwner saved);
extern void rs_run_plan(SPIPlanPtr plan, Datum *args, const char *nulls);
extern Row * rs_read_rows(Tuplestorestate *ts, TupleDesc desc, int a_pk, int a_ver, int a_mod, int a_org, int a_chg, int *count);
extern char * rs_version_text(TimestampTz t, const char *origin);
extern bool rs_versions_forged(Tuplestorestate *ts, TupleDesc desc, int a_mod, const char *here,
							   int number);

/* A column version as a number (migration 0021): the TimestampTz (microseconds since
 * 2000-01-01 UTC) shifted left 11 bits, or'ed with the writer's origin number. */
#define RS_ORIGIN_BITS 11
#define rs_version_number(t, number) \
	((int64) (((uint64) (t) << RS_ORIGIN_BITS) | (uint64) (number)))
extern Datum rs_uuid_array(Row *rows, int *pick, int n);
extern Datum rs_version_array(Row *rows, int *pick, int n);
extern void rs_journal_write(const char *table, char op, const char *origin, Datum pks, Datum versions, Row *first);
extern void rs_journal_by_origin(const char *table, char op, Row *rows, int *pick, int n);
extern bool rs_tombstone_of(IndexScanDesc scan, Datum table_text, pg_uuid_t *pk, TupleTableSlot *slot);
extern bool rs_at_least_as_new(TimestampTz tb_time, Datum tb_origin, TimestampTz row_time, Datum here);
extern bool rs_shadowed_by_tombstone(const char *table, const char *here, Row *rows, int n, TimestampTz oldest);

#endif
