-- Relays are woken by the statement that publishes (pg_notify in outbox.publish() and the
-- session hook), not by a trigger: a statement trigger cost every publishing transaction
-- more than the rest of the NOTIFY (docs/decisions/0008). Writers that insert rows with
-- SQL of their own add `SELECT pg_notify('outbox', '')` or leave the relays to poll.
DROP TRIGGER outbox_events_notify ON outbox_events;
DROP FUNCTION outbox_events_notify();
