-- Every statement outbox-relay runs at runtime, by name. outbox/_queries.py loads this file
-- once; nothing else in the package holds SQL text.
--
-- A block starts with `-- name: NAME` (a statement) or `-- fragment: NAME` (text shared by
-- statements, inserted where they write `{NAME}`). The comment lines right after the header
-- say what the statement does and which index serves it. Placeholders in braces are
-- identifiers or literals rendered once through psycopg.sql: {table} is the schema's
-- outbox_events, {sinks} its outbox_sinks, {schema} the schema itself; a brace that is SQL
-- text is doubled ('{{}}'::jsonb). Parameters are psycopg's %(name)s.

-- ===========================================================================================
-- shared: fragments and statements that the relay and the admin both use
-- ===========================================================================================

-- fragment: key_not_parked
-- The row `e` is not parked: it has no key, or no earlier event of its key failed
-- (outbox_events_key_idx).
(e.key IS NULL OR NOT EXISTS (
    SELECT 1 FROM {table} AS f
    WHERE f.key = e.key AND f.id < e.id AND f.status = 'failed'))

-- name: disabled_sinks
-- Sinks switched off by an operator or a 410 Gone, with when and why (primary key of
-- outbox_sinks, a handful of rows).
SELECT name, disabled_at, disabled_reason FROM {sinks}
WHERE disabled_at IS NOT NULL ORDER BY name

-- ===========================================================================================
-- relay (outbox/store.py)
-- ===========================================================================================

-- ===========================================================================================
-- admin (outbox/admin.py)
-- ===========================================================================================

-- ===========================================================================================
-- publish (the event writer)
-- ===========================================================================================

-- ===========================================================================================
-- postgres sink (outbox/postgres_sink.py): {target} is the sink's table
-- ===========================================================================================

-- ===========================================================================================
-- migrate (outbox/migrate.py): bookkeeping around the migration files
-- ===========================================================================================
