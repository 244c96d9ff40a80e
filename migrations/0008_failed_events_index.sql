-- Failed events by id: the per-sink figures (`outbox sinks list`, `outbox status`, and the
-- relay's metrics every maintenance round) read the failed rows, which no other index
-- covers; without it, a scan of the whole table (done rows included) each time. Costs
-- nothing at publish: events start out pending.
-- Runs with search_path set to the target schema.

CREATE INDEX outbox_events_failed_idx ON outbox_events (id) WHERE status = 'failed';
