-- The outbox table, its claim indexes and the NOTIFY trigger.
-- Runs with search_path set to the target schema; the trigger argument is the LISTEN channel.

CREATE TABLE outbox_events (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    topic         text        NOT NULL,
    key           text,
    payload       jsonb       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status        text        NOT NULL DEFAULT 'pending',
    attempts      integer     NOT NULL DEFAULT 0,
    process_at    timestamptz NOT NULL DEFAULT now(),
    locked_by     text,
    locked_until  timestamptz,
    lease_token   uuid,
    deliveries    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    errors        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    last_error    text,
    dedup_key     text,
    -- The inserting transaction: keyed rows are claimable only once it is older than every
    -- running transaction, so a lower id that commits later is never overtaken for its key.
    txid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    done_at       timestamptz,
    CONSTRAINT outbox_events_pkey PRIMARY KEY (id),
    CONSTRAINT outbox_events_status_check
        CHECK (status IN ('pending', 'processing', 'done', 'failed')),
    CONSTRAINT outbox_events_attempts_check CHECK (attempts >= 0)
);

-- Claim: pending rows by due time. Partial, so done rows never slow a claim.
CREATE INDEX outbox_events_pending_idx
    ON outbox_events (process_at, id) WHERE status = 'pending';

-- Lease recovery: rows in flight by lease expiry.
CREATE INDEX outbox_events_processing_idx
    ON outbox_events (locked_until) WHERE status = 'processing';

-- Per-key ordering: the oldest unfinished event of a key.
CREATE INDEX outbox_events_key_idx
    ON outbox_events (key, id) WHERE key IS NOT NULL AND status <> 'done';

-- Retention: done rows by age.
CREATE INDEX outbox_events_done_idx
    ON outbox_events (done_at) WHERE status = 'done';

-- A second publish with the same dedup_key is a no-op.
CREATE UNIQUE INDEX outbox_events_dedup_key_idx
    ON outbox_events (dedup_key) WHERE dedup_key IS NOT NULL;

-- Status updates leave dead tuples that slow claims: vacuum this table early.
ALTER TABLE outbox_events SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);

-- One NOTIFY per inserting statement; Postgres folds identical notifications of a
-- transaction into one, so a committing transaction wakes relays once.
CREATE FUNCTION outbox_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_events_notify
    AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify(:channel);
