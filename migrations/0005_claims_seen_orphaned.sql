-- Lock mode takes back a dead relay's batch only once its relay has had no connection for a
-- while (docs/decisions/0010): a relay whose connections were cut (a restart of the server,
-- terminated sessions) reconnects and forgets its own batches, and is not counted as dead.
-- Runs with search_path set to the target schema.

ALTER TABLE outbox_claims ADD COLUMN orphaned_at timestamptz;
