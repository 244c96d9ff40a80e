-- Poison events (docs/decisions/0010): rows that were in flight when a relay died are
-- suspects, claimed one at a time and alone; a relay that dies delivering a suspect charges
-- it a crash, and max_attempts crashes fail it. Lock mode, whose claims write nothing, records
-- each batch in flight in outbox_claims so that a dead relay's batch is found.
-- Runs with search_path set to the target schema.

ALTER TABLE outbox_events
    ADD COLUMN suspect boolean NOT NULL DEFAULT false,
    ADD COLUMN crashes integer NOT NULL DEFAULT 0;

-- Claim of a suspect: the (few) suspects by due time.
CREATE INDEX outbox_events_suspect_idx
    ON outbox_events (process_at, id) WHERE status = 'pending' AND suspect;

CREATE TABLE outbox_claims (
    id               bigint      GENERATED ALWAYS AS IDENTITY,
    -- The relay's connections carry this application_name: none left, the relay is gone.
    application_name text        NOT NULL DEFAULT current_setting('application_name'),
    event_ids        bigint[]    NOT NULL,
    -- The batch is one suspect, alone: the relay dying with it charges that event a crash.
    suspect          boolean     NOT NULL,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_claims_pkey PRIMARY KEY (id)
);
