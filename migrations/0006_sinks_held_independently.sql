-- Sinks that never hold each other back (docs/decisions/0011): an operator may pause a sink;
-- while paused (or disabled by a 410 Gone), its deliveries wait, counting no attempt.
-- Runs with search_path set to the target schema.

ALTER TABLE outbox_sinks
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN paused_reason text;
