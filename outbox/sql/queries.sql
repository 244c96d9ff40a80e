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
