"""Region schema: Dataverse-like business tables, the sync schema and change tracking.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SYNC_SCHEMA = r"""
CREATE SCHEMA IF NOT EXISTS sync;

-- Database-wide version counter, as Dataverse's versionnumber: every captured write
-- takes the next value. Token-based polling does NOT rely on it being commit-ordered
-- (see capture.py: batches are bounded by transaction snapshots).
CREATE SEQUENCE sync.versionnumber_seq;

CREATE TABLE sync.settings (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    region  text NOT NULL CHECK (region ~ '^[a-z0-9][a-z0-9_-]*$')
);

CREATE FUNCTION sync.local_region() RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE r text;
BEGIN
    SELECT region INTO r FROM sync.settings;
    IF r IS NULL THEN
        RAISE EXCEPTION 'regionsync: this database has no region name; run `regionsync migrate --config region.yaml`';
    END IF;
    RETURN r;
END $$;

-- The change tracking journal: one entry per captured insert/update/delete.
CREATE TABLE sync.change_log (
    versionnumber bigint PRIMARY KEY,
    tablename     text        NOT NULL,
    pk            uuid        NOT NULL,
    op            char(1)     NOT NULL CHECK (op IN ('i', 'u', 'd')),
    origin        text        NOT NULL,
    modifiedon    timestamptz NOT NULL,
    txid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    changed_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX change_log_txid ON sync.change_log (txid);
CREATE INDEX change_log_key ON sync.change_log (tablename, pk);

-- Delete tombstones: when and by which region a row was deleted, so that an older
-- version arriving later (from another peer) cannot resurrect it.
CREATE TABLE sync.tombstone (
    tablename  text        NOT NULL,
    pk         uuid        NOT NULL,
    modifiedon timestamptz NOT NULL,
    origin     text        NOT NULL,
    PRIMARY KEY (tablename, pk)
);

CREATE TABLE sync.tracked_table (
    tablename  text PRIMARY KEY,
    pk_column  text NOT NULL,
    enabled_on timestamptz NOT NULL DEFAULT now()
);

-- Per peer: the snapshot token of the last applied batch (never moves backwards).
CREATE TABLE sync.peer_state (
    peer              text PRIMARY KEY,
    token             text        NOT NULL,
    initial_load_at   timestamptz,
    last_applied_at   timestamptz NOT NULL DEFAULT now(),
    batches_applied   bigint      NOT NULL DEFAULT 0,
    changes_applied   bigint      NOT NULL DEFAULT 0,
    policy_sha        text
);

CREATE TABLE sync.dead_letter (
    id              bigserial PRIMARY KEY,
    peer            text        NOT NULL,
    tablename       text        NOT NULL,
    pk              uuid        NOT NULL,
    op              text        NOT NULL,
    row_data        jsonb,
    error           text        NOT NULL,
    sqlstate        text,
    retryable       boolean     NOT NULL DEFAULT false,
    attempts        integer     NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (peer, tablename, pk)
);

CREATE TABLE sync.conflict_log (
    id                bigserial PRIMARY KEY,
    tablename         text        NOT NULL,
    pk                uuid        NOT NULL,
    peer              text        NOT NULL,
    winner_origin     text        NOT NULL,
    winner_modifiedon timestamptz NOT NULL,
    loser_origin      text        NOT NULL,
    loser_modifiedon  timestamptz NOT NULL,
    loser_row         jsonb       NOT NULL,
    diff              jsonb       NOT NULL,
    logged_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sync.policy_audit (
    id         bigserial PRIMARY KEY,
    sha        text        NOT NULL,
    files      jsonb       NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now()
);

-- Change tracking for one table (Dataverse: "track changes" per table). Generates a
-- BEFORE trigger (versionnumber, modifiedon, sync_origin; no-op updates keep their
-- version) and an AFTER trigger (journal entry; tombstone on local delete), with the
-- primary key column inlined so the hot path does no dynamic field access.
CREATE FUNCTION sync.enable_change_tracking(p_table text) RETURNS void
LANGUAGE plpgsql AS $enable$
DECLARE
    pkcol text := p_table || 'id';
BEGIN
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            applying text := nullif(current_setting('regionsync.origin', true), '');
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                NEW.versionnumber := OLD.versionnumber;
                IF applying IS NULL THEN
                    NEW.modifiedon := OLD.modifiedon;
                    NEW.sync_origin := OLD.sync_origin;
                    NEW.createdon := OLD.createdon;
                END IF;
                IF NEW IS NOT DISTINCT FROM OLD THEN
                    RETURN NEW;  -- no-op update: same version, no journal entry
                END IF;
            END IF;
            NEW.versionnumber := nextval('sync.versionnumber_seq');
            IF applying IS NULL THEN
                NEW.modifiedon := clock_timestamp();
                NEW.sync_origin := sync.local_region();
                IF TG_OP = 'INSERT' THEN
                    NEW.createdon := coalesce(NEW.createdon, NEW.modifiedon);
                END IF;
            END IF;
            RETURN NEW;
        END $body$ $fn$, 'capture_before_' || p_table);

    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION sync.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            applying text := nullif(current_setting('regionsync.origin', true), '');
            t_mod timestamptz;
            t_origin text;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF applying IS NULL THEN
                    INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin)
                    VALUES (TG_TABLE_NAME, OLD.%2$I, clock_timestamp(), sync.local_region())
                    ON CONFLICT (tablename, pk) DO UPDATE
                        SET modifiedon = EXCLUDED.modifiedon, origin = EXCLUDED.origin
                    RETURNING tb.modifiedon, tb.origin INTO t_mod, t_origin;
                ELSE
                    -- apply wrote the incoming tombstone just before deleting
                    SELECT tb.modifiedon, tb.origin INTO t_mod, t_origin
                    FROM sync.tombstone tb WHERE tb.tablename = TG_TABLE_NAME AND tb.pk = OLD.%2$I;
                    t_mod := coalesce(t_mod, clock_timestamp());
                    t_origin := coalesce(t_origin, applying);
                END IF;
                INSERT INTO sync.change_log (versionnumber, tablename, pk, op, origin, modifiedon)
                VALUES (nextval('sync.versionnumber_seq'), TG_TABLE_NAME, OLD.%2$I, 'd', t_origin, t_mod);
                RETURN NULL;
            END IF;
            IF TG_OP = 'UPDATE' AND NEW.versionnumber = OLD.versionnumber THEN
                RETURN NULL;
            END IF;
            INSERT INTO sync.change_log (versionnumber, tablename, pk, op, origin, modifiedon)
            VALUES (NEW.versionnumber, TG_TABLE_NAME, NEW.%2$I, lower(left(TG_OP, 1)),
                    NEW.sync_origin, NEW.modifiedon);
            RETURN NULL;
        END $body$ $fn$, 'capture_after_' || p_table, pkcol);

    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_before ON public.%I', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS regionsync_capture_after ON public.%I', p_table);
    EXECUTE format('CREATE TRIGGER regionsync_capture_before BEFORE INSERT OR UPDATE ON public.%I '
                   'FOR EACH ROW EXECUTE FUNCTION sync.%I()', p_table, 'capture_before_' || p_table);
    EXECUTE format('CREATE TRIGGER regionsync_capture_after AFTER INSERT OR UPDATE OR DELETE ON public.%I '
                   'FOR EACH ROW EXECUTE FUNCTION sync.%I()', p_table, 'capture_after_' || p_table);
    INSERT INTO sync.tracked_table (tablename, pk_column) VALUES (p_table, pkcol)
    ON CONFLICT (tablename) DO NOTHING;
END $enable$;
"""

# Dataverse's system columns, on every tracked table (set by the capture triggers).
SYSTEM_COLUMNS = """createdon timestamptz NOT NULL DEFAULT now(),
    modifiedon    timestamptz NOT NULL DEFAULT now(),
    versionnumber bigint      NOT NULL DEFAULT 0,
    sync_origin   text        NOT NULL DEFAULT ''"""

# Foreign keys are DEFERRABLE: apply defers them to the end of a batch so that the
# order of rows inside one batch cannot cause a spurious violation.
BUSINESS_TABLES = r"""
CREATE TABLE public.account (
    accountid        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    accountnumber    text UNIQUE,
    name             text NOT NULL,
    telephone1       text,
    emailaddress1    text,
    address1_city    text,
    address1_country text,
    revenue          numeric(19, 4),
    statecode        integer NOT NULL DEFAULT 0,
    {SYSTEM_COLUMNS}
);

CREATE TABLE public.contact (
    contactid        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    accountid        uuid REFERENCES public.account DEFERRABLE INITIALLY IMMEDIATE,
    firstname        text,
    lastname         text NOT NULL,
    emailaddress1    text,
    telephone1       text,
    address1_country text,
    birthdate        date,
    medical_notes    text,
    implant_serial   text,
    statecode        integer NOT NULL DEFAULT 0,
    {SYSTEM_COLUMNS}
);
CREATE INDEX contact_accountid ON public.contact (accountid);

CREATE TABLE public.salesorder (
    salesorderid     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ordernumber      text UNIQUE,
    accountid        uuid REFERENCES public.account DEFERRABLE INITIALLY IMMEDIATE,
    contactid        uuid REFERENCES public.contact DEFERRABLE INITIALLY IMMEDIATE,
    name             text,
    totalamount      numeric(19, 4),
    statecode        integer NOT NULL DEFAULT 0,
    {SYSTEM_COLUMNS}
);
CREATE INDEX salesorder_accountid ON public.salesorder (accountid);
CREATE INDEX salesorder_contactid ON public.salesorder (contactid);

CREATE TABLE public.shipment (
    shipmentid          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    salesorderid        uuid NOT NULL REFERENCES public.salesorder DEFERRABLE INITIALLY IMMEDIATE,
    carrier             text,
    trackingnumber      text,
    destination_country text,
    status              text NOT NULL DEFAULT 'pending',
    shippedon           timestamptz,
    {SYSTEM_COLUMNS}
);
CREATE INDEX shipment_salesorderid ON public.shipment (salesorderid);

-- Wholly region-local: no policy rule ever lets it leave.
CREATE TABLE public.medicalcase (
    medicalcaseid    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    contactid        uuid NOT NULL REFERENCES public.contact DEFERRABLE INITIALLY IMMEDIATE,
    diagnosis        text NOT NULL,
    treatment        text,
    openedon         date NOT NULL DEFAULT current_date,
    {SYSTEM_COLUMNS}
);
CREATE INDEX medicalcase_contactid ON public.medicalcase (contactid);

SELECT sync.enable_change_tracking(t)
FROM unnest(ARRAY['account', 'contact', 'salesorder', 'shipment', 'medicalcase']) AS t;
"""


def upgrade() -> None:
    op.execute(SYNC_SCHEMA)
    op.execute(BUSINESS_TABLES.replace("{SYSTEM_COLUMNS}", SYSTEM_COLUMNS))


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS public.medicalcase, public.shipment, public.salesorder, "
               "public.contact, public.account CASCADE")
    op.execute("DROP SCHEMA IF EXISTS sync CASCADE")
