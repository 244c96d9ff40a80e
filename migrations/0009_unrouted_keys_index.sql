-- Unrouted keyed events by key: a keyed event may be claimed only when no earlier event of
-- its key is still unrouted (decision 11). Without it, that check reads every earlier
-- unfinished event of the key, which a failing sink lets grow with each new event. Costs one
-- index entry per keyed event until its first claim settles.
-- Runs with search_path set to the target schema.

CREATE INDEX outbox_events_unrouted_idx ON outbox_events (key, id)
WHERE key IS NOT NULL AND status <> 'done' AND deliveries = '{}'::jsonb;
