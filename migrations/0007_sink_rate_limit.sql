-- Per-sink rate limits held across every relay: a sink with `rate_limit` set keeps its token
-- bucket in its outbox_sinks row. `rate_tokens` is what the bucket held at
-- `rate_refilled_at`; `rate_granted` is what the last take granted (the statement that takes
-- returns it). All null for a sink without a limit.
-- Runs with search_path set to the target schema.

ALTER TABLE outbox_sinks
    ADD COLUMN rate_tokens double precision,
    ADD COLUMN rate_refilled_at timestamptz,
    ADD COLUMN rate_granted integer;
