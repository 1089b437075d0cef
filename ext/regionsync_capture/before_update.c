/* before_update.c: the BEFORE UPDATE row trigger, versions and provenance. */
#include "capture.h"

PG_FUNCTION_INFO_V1(capture_before_update);

typedef struct BeforeCache
{
	Oid			relid;			/* the hash key */
	bool		valid;			/* false after a relcache invalidation of relid or seq */
	int			natts;
	int			a_ver,
				a_mod,
				a_org,
				a_cre;
	Oid			seq;
	int			a_base,			/* sync_base, sync_changed (-1: no per-column versions) */
				a_chg;
	bool		numeric;		/* versions are numbers (0021), not text (0018) */
	bool		alone;			/* no other BEFORE UPDATE row trigger on the table */
	int		   *vattr;			/* per attribute: its version column, or -1 */
} BeforeCache;

/* One statement's: the table's entry, and whether its writer is apply. */
typedef struct BeforeState
{
	BeforeCache *cache;
	bool		asked;
	Oid			user;			/* the writer member was asked for */
	bool		member;			/* of regionsync_apply */
	int			number;			/* this region's origin number (0: not asked yet) */
} BeforeState;

/* A column version as sync.version_text writes it: UTC time, fixed width, then origin. */
char *
rs_version_text(TimestampTz t, const char *origin)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(t) || timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR, (errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
						errmsg("regionsync: a version time is out of range")));
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ %s", tm.tm_year, tm.tm_mon,
					tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec, origin);
}

/*
 * What the trigger needs to know of a table (its system columns, each data column's
 * version column, the version sequence) is looked up once per backend and table, not per
 * statement: a 1-row UPDATE paid for the lookups (a name scan of every column per column)
 * on every statement. Entries live in TopMemoryContext and are marked stale by a relcache
 * invalidation of the table or the sequence (ALTER TABLE, a migration), or of everything.
 */
static HTAB *before_caches = NULL;

static void
invalidate_before_caches(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	BeforeCache *c;

	if (before_caches == NULL)
		return;
	hash_seq_init(&status, before_caches);
	while ((c = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || c->relid == relid || c->seq == relid)
			c->valid = false;
}

/* Each data column's version column ("<name>__v"), where the table has them. */
static void
map_versions(BeforeCache *c, TupleDesc desc, Relation rel, MemoryContext cxt)
{
	if (c->vattr != NULL)
		pfree(c->vattr);
	c->vattr = MemoryContextAlloc(cxt, sizeof(int) * desc->natts);
	c->a_base = rs_column(desc, "sync_base", false, rel) - 1;
	c->a_chg = rs_column(desc, "sync_changed", false, rel) - 1;
	c->numeric = rs_numeric_versions(desc, c->a_base);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		char		vname[NAMEDATALEN + 4];

		c->vattr[i] = -1;
		if (att->attisdropped || c->a_base < 0)
			continue;
		snprintf(vname, sizeof(vname), "%s__v", NameStr(att->attname));
		for (int j = 0; j < desc->natts; j++)
			if (!TupleDescAttr(desc, j)->attisdropped &&
				strcmp(NameStr(TupleDescAttr(desc, j)->attname), vname) == 0)
				c->vattr[i] = j;
	}
}

/*
 * Whether this is the table's only BEFORE UPDATE row trigger. Then a column the statement
 * does not set (tg_updatedcols) holds its old value in NEW, and is not compared; another
 * such trigger could change any column, so then every column is. CREATE or DROP TRIGGER
 * invalidates the table's relcache entry, and with it this answer.
 */
static bool
only_before_update_trigger(Relation rel, Oid self)
{
	TriggerDesc *td = rel->trigdesc;

	if (td == NULL)
		return true;
	for (int i = 0; i < td->numtriggers; i++)
	{
		Trigger    *t = &td->triggers[i];

		if (t->tgoid != self && TRIGGER_FOR_ROW(t->tgtype) &&
			TRIGGER_FOR_BEFORE(t->tgtype) && TRIGGER_FOR_UPDATE(t->tgtype))
			return false;
	}
	return true;
}

/* The table's entry, (re)built when missing or stale. */
static BeforeCache *
before_cache(Relation rel, TupleDesc desc, Oid self)
{
	Oid			relid = RelationGetRelid(rel);
	BeforeCache *c;
	bool		found;

	if (before_caches == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(BeforeCache);
		ctl.hcxt = TopMemoryContext;
		before_caches = hash_create("regionsync before-update columns", 16, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(invalidate_before_caches, (Datum) 0);
	}
	c = hash_search(before_caches, &relid, HASH_ENTER, &found);
	if (!found)
	{
		c->vattr = NULL;
		c->valid = false;
	}
	if (!c->valid || c->natts != desc->natts)
	{
		c->valid = false;		/* until every lookup below has succeeded */
		c->natts = desc->natts;
		c->a_ver = rs_column(desc, "versionnumber", true, rel) - 1;
		c->a_mod = rs_column(desc, "modifiedon", true, rel) - 1;
		c->a_org = rs_column(desc, "sync_origin", true, rel) - 1;
		c->a_cre = rs_column(desc, "createdon", false, rel) - 1;
		c->seq = rs_version_sequence();
		map_versions(c, desc, rel, TopMemoryContext);
		c->alone = only_before_update_trigger(rel, self);
		c->valid = true;
	}
	return c;
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

/*
 * capture_before_update(region[, origin number]): versions and provenance of an updated row.
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
	BeforeCache *cache;
	int64		mask = 0;
	int			number = 0;
	const Bitmapset *set;

	rs_check_trigger(fcinfo, "capture_before_update", 1);
	if (!TRIGGER_FIRED_BEFORE(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		ereport(ERROR, (errmsg("regionsync: capture_before_update() fires BEFORE UPDATE FOR EACH ROW")));
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	newt = td->tg_newtuple;

	{
		/* per backend and table (see before_caches): columns and sequence. Per statement
		 * (fn_extra, the trigger's FmgrInfo lives that long): the entry, and whether the
		 * writer is apply — asked again every statement, so that a role revoked from
		 * regionsync_apply is never honoured past the statement that saw it a member */
		BeforeState *st = fcinfo->flinfo->fn_extra;
		Oid			relid = RelationGetRelid(rel);
		BeforeCache *c;

		if (st == NULL)
		{
			st = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(BeforeState));
			fcinfo->flinfo->fn_extra = st;
		}
		c = st->cache;
		if (c == NULL || c->relid != relid || !c->valid || c->natts != desc->natts)
		{
			c = before_cache(rel, desc, td->tg_trigger->tgoid);
			st->cache = c;
		}
		if (!st->asked || st->user != GetUserId())
		{
			st->user = GetUserId();
			st->member = rs_is_apply_member();
			st->asked = true;
		}
		if (st->member)
		{
			const char *stamped = rs_apply_setting("regionsync.stamped");

			if (stamped != NULL && strcmp(stamped, "on") == 0)
				return PointerGetDatum(newt);
			applying = rs_apply_setting("regionsync.origin");
		}
		if (c->numeric && st->number == 0)
		{
			st->number = rs_origin_number(td, 1);
			if (st->number < 0)
				ereport(ERROR, (errmsg("regionsync: the capture trigger of %s predates numbered versions; run `regionsync migrate`",
									   RelationGetRelationName(rel))));
		}
		number = st->number;
		a_ver = c->a_ver;
		a_mod = c->a_mod;
		a_org = c->a_org;
		a_cre = c->a_cre;
		seq = c->seq;
		cache = c;
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
	if (cache->a_chg >= 0)
	{
		nv[cache->a_chg] = ov[cache->a_chg];
		nn[cache->a_chg] = on[cache->a_chg];
	}
	if (applying == NULL)
	{
		if (cache->a_base >= 0)
		{
			nv[cache->a_base] = ov[cache->a_base];
			nn[cache->a_base] = on[cache->a_base];
		}
		for (int i = 0; i < desc->natts; i++)
			if (cache->vattr[i] >= 0)
			{
				nv[cache->vattr[i]] = ov[cache->vattr[i]];
				nn[cache->vattr[i]] = on[cache->vattr[i]];
			}
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
	/* what changed: every column the statement set (every column, if another trigger
	 * could have set more), and per versioned column its bit (attnum - 1; past 63 they
	 * share bit 63) for the journal entry */
	set = cache->alone ? td->tg_updatedcols : NULL;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || (changed && cache->vattr[i] < 0))
			continue;
		if (set != NULL && !bms_is_member(i + 1 - FirstLowInvalidHeapAttributeNumber, set))
			continue;
		if (!same_value(att, ov[i], on[i], nv[i], nn[i]))
		{
			changed = true;
			if (cache->vattr[i] >= 0)
				mask |= (int64) ((uint64) 1 << Min(i, 63));
		}
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
			nv[a_org] = CStringGetTextDatum(rs_region_name(td->tg_trigger->tgargs[0]));
			nn[a_org] = false;
			if (mask != 0)
			{
				/* the changed columns take this write's version (one for all) */
				Datum		ver = cache->numeric ?
					Int64GetDatum(rs_version_number(now, number)) :
					CStringGetTextDatum(rs_version_text(now, rs_region_name(td->tg_trigger->tgargs[0])));

				for (int i = 0; i < desc->natts; i++)
					if (cache->vattr[i] >= 0 && (mask & (int64) ((uint64) 1 << Min(i, 63))) &&
						(i < 63 || !same_value(TupleDescAttr(desc, i), ov[i], on[i], nv[i], nn[i])))
					{
						nv[cache->vattr[i]] = ver;
						nn[cache->vattr[i]] = false;
					}
			}
		}
		if (cache->a_chg >= 0)
		{
			nv[cache->a_chg] = Int64GetDatum(mask);
			nn[cache->a_chg] = false;
		}
	}
	out = heap_form_tuple(desc, nv, nn);
	out->t_data->t_ctid = newt->t_data->t_ctid;
	out->t_self = newt->t_self;
	out->t_tableOid = newt->t_tableOid;
	return PointerGetDatum(out);
}
