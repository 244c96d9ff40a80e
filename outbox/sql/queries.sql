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

-- name: disabled_sinks
-- Sinks switched off by an operator or a 410 Gone, with when and why (primary key of
-- outbox_sinks, a handful of rows).
SELECT name, disabled_at, disabled_reason FROM {sinks}
WHERE disabled_at IS NOT NULL ORDER BY name

-- ===========================================================================================
-- relay (outbox/store.py)
-- ===========================================================================================

-- fragment: key_fence
-- The keyed row `e` is past the ordering fence (decisions 2 and 9): its inserting transaction
-- is older than every transaction still running in THIS database, prepared ones included, so
-- a lower id that commits later is never overtaken. First the cheap server-wide test; only if
-- it fails (a transaction older than the row runs somewhere on the server) is the subquery
-- run, once per statement: the statement snapshot's running xids, less those that
-- pg_stat_get_activity or pg_prepared_xact place in another database (a transaction there
-- cannot write this table). An xid found nowhere ended after the snapshot: it stays in the
-- fence, as does one whose database is not shown (no database, or hidden from this role).
(e.txid < pg_snapshot_xmin(pg_current_snapshot())
 OR e.txid < (
    SELECT COALESCE(min(x), pg_snapshot_xmax(pg_current_snapshot()))
    FROM pg_snapshot_xip(pg_current_snapshot()) AS x
    WHERE xid(x) NOT IN (
        SELECT a.backend_xid FROM pg_stat_get_activity(NULL) AS a
        WHERE a.backend_xid IS NOT NULL
          AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())
        UNION ALL
        SELECT p.transaction FROM pg_prepared_xact() AS p
        WHERE p.dbid <> (SELECT oid FROM pg_database WHERE datname = current_database()))))

-- fragment: sink_blocked
-- Whether sink d.key of the keyed row `e` waits for an earlier event of its key: one that
-- is not done and has not delivered to that sink (decision 11: per-key order is per sink;
-- an earlier event's failure parks the key for the sinks it failed at, and only for them).
-- A failed event's notes of sinks passing (see blocked_sinks) do not count
-- (outbox_events_key_idx).
EXISTS (
    SELECT 1 FROM {table} AS earlier
    WHERE earlier.key = e.key AND earlier.id < e.id AND earlier.status <> 'done'
      AND earlier.deliveries -> d.key ->> 'status' <> 'delivered'
      AND (earlier.status <> 'failed' OR earlier.deliveries -> d.key ->> 'status' <> 'passing'))

-- fragment: deliverable
-- Whether the pending row `e` may be claimed as far as its key goes (decision 11): an unkeyed
-- row always; a keyed row only if no earlier event of its key is still unrouted (never
-- claimed: which sinks it goes to is not known yet). A claimed row whose sinks all wait
-- behind earlier events is routed with no call: each such sink waits, and the row looks again
-- when that earlier event reaches the sink (see woken_behind) or at a bound (blocked_sinks)
-- (outbox_events_unrouted_idx).
(e.key IS NULL OR NOT EXISTS (
    SELECT 1 FROM {table} AS earlier
    WHERE earlier.key = e.key AND earlier.id < e.id AND earlier.status <> 'done'
      AND earlier.deliveries = '{{}}'::jsonb))

-- fragment: blocked_sinks
-- For the claimed keyed row `e`, the sinks that an earlier event of its key has not reached
-- yet, read from few rows: the nearest earlier event still to be delivered (pending or in
-- flight), and the failed events after it. Per-key order per sink means the nearest one has
-- not reached those sinks either (it waits behind), or notes them as `passing` when it does
-- not go to them itself; a failed event is not looked at again, so its own entries count and
-- its notes are left out. Each with when to look again: never by itself ('infinity') behind
-- an event that failed there, which parks the key for that sink until an operator retries
-- or purges it; else at that event's own next look for the sink, and no sooner than 15
-- seconds from now. The settle that delivers the earlier event there wakes the next one
-- (woken_behind); the bound only covers a wake missed. A JSON object; NULL for an unkeyed
-- row or one blocked nowhere. First one probe: most keyed rows have no earlier unfinished
-- event at all (outbox_events_key_idx).
(CASE WHEN e.key IS NOT NULL AND EXISTS (
    SELECT 1 FROM {table} AS earlier
    WHERE earlier.key = e.key AND earlier.id < e.id AND earlier.status <> 'done')
THEN (SELECT jsonb_object_agg(b.sink, greatest(b.until, now() + interval '15 seconds')) FROM (
    SELECT d.key AS sink,
           max(CASE d.value ->> 'status'
                   WHEN 'failed' THEN 'infinity'::timestamptz
                   WHEN 'retrying' THEN (d.value ->> 'not_before')::timestamptz
                   ELSE COALESCE((d.value ->> 'until')::timestamptz, earlier.process_at)
               END) AS until
    FROM {table} AS earlier CROSS JOIN LATERAL jsonb_each(earlier.deliveries) AS d
    WHERE e.key IS NOT NULL AND earlier.key = e.key AND earlier.id < e.id
      AND earlier.id >= COALESCE((
          SELECT live.id FROM {table} AS live
          WHERE live.key = e.key AND live.id < e.id AND live.status IN ('pending', 'processing')
          ORDER BY live.id DESC
          LIMIT 1), 0)
      AND earlier.status <> 'done' AND d.value ->> 'status' <> 'delivered'
      AND (earlier.status <> 'failed' OR d.value ->> 'status' <> 'passing')
    GROUP BY d.key) AS b) END)

-- fragment: claimable
-- The conditions a due row `e` meets to be claimed: pending and due
-- (outbox_events_pending_idx, outbox_events_suspect_idx), not in a lock-mode batch still
-- recorded in outbox_claims (one hashed subplan per statement: that batch's relay is alive
-- and holds the row, or died and its rows wait for recover_dead_claims), deliverable
-- (above), and a keyed row only past the key fence.
e.status = 'pending'
  AND e.process_at <= now()
  AND e.id NOT IN (SELECT unnest(c.event_ids) FROM {claims} AS c)
  AND {deliverable}
  AND (e.key IS NULL OR {key_fence})

-- fragment: due_rows
-- The rows a claim takes, as two CTEs: `suspect`, one row that was in flight when a relay
-- died (decision 10), taken alone and only when %(take_suspect)s (the relay has nothing else
-- in flight); else `due`, up to a batch of the other claimable rows, oldest first. Rows
-- another relay has locked are skipped. Shared by both claims below, so that the two claim
-- modes take exactly the same rows.
suspect AS (
    SELECT e.id FROM {table} AS e
    WHERE %(take_suspect)s AND e.suspect AND {claimable}
    ORDER BY e.process_at, e.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT e.id FROM {table} AS e
    WHERE NOT e.suspect AND {claimable} AND NOT EXISTS (SELECT 1 FROM suspect)
    ORDER BY e.process_at, e.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    SELECT id FROM suspect UNION ALL SELECT id FROM due
)

-- name: claim_leased
-- Claim a batch with a lease (claim_mode "lease"): the due rows become `processing`, each
-- with its own lease token; the statement commits on its own. Primary key for the update:
-- the ids as an array, since a join to `claimed` let the planner hash the whole table for a
-- large batch (a sequential scan of every row, done ones included, per claim).
WITH {due_rows}
UPDATE {table} AS e
SET status = 'processing',
    attempts = e.attempts + 1,
    locked_by = %(relay)s,
    locked_until = now() + make_interval(secs => %(lease)s),
    lease_token = gen_random_uuid()
WHERE e.id = ANY(ARRAY(SELECT id FROM claimed))
RETURNING e.id, e.topic, e.key, e.payload::text, NULLIF(e.headers, '{{}}'::jsonb), e.attempts,
          NULLIF(e.deliveries, '{{}}'::jsonb), NULLIF(e.errors, '[]'::jsonb),
          e.created_at, e.lease_token, now(), e.suspect, {blocked_sinks}

-- name: claim_locked
-- Claim a batch under row locks (claim_mode "lock"): the due rows, read and locked inside
-- the batch's transaction, nothing written. The lock is the lease: it ends with the
-- transaction, and a rollback hands the rows back as they were. This delivery is an attempt,
-- counted when it settles: reported here as the stored attempts + 1. The same rows as
-- due_rows above, each CTE reading its columns itself (a join back to the table cost more).
WITH suspect AS (
    SELECT {locked_columns} FROM {table} AS e
    WHERE %(take_suspect)s AND e.suspect AND {claimable}
    ORDER BY e.process_at, e.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT {locked_columns} FROM {table} AS e
    WHERE NOT e.suspect AND {claimable} AND NOT EXISTS (SELECT 1 FROM suspect)
    ORDER BY e.process_at, e.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
SELECT * FROM suspect UNION ALL SELECT * FROM due

-- fragment: locked_columns
-- What claim_locked reads of each row, in the order the store expects.
e.id, e.topic, e.key, e.payload::text, NULLIF(e.headers, '{{}}'::jsonb), e.attempts + 1,
NULLIF(e.deliveries, '{{}}'::jsonb), NULLIF(e.errors, '[]'::jsonb), e.created_at, NULL::uuid,
now(), e.suspect, {blocked_sinks}

-- fragment: next_look
-- The settled row's next look: now if one of the sinks it waits at behind an earlier event
-- (s.blocked) is blocked no more (that event reached the sink while this row was in flight,
-- and its wake passed this row by); else as the relay decided (decision 11).
CASE WHEN EXISTS (SELECT 1 FROM unnest(s.blocked) AS d(key) WHERE NOT {sink_blocked})
     THEN now() ELSE COALESCE(s.process_at, e.process_at) END

-- fragment: woken_behind
-- A CTE after `settled` (the rows just written, with the sinks each delivered to after
-- waiting or retrying: s.freed): per key and such sink, the next event still to be
-- delivered (pending or in flight) that has not reached it looks again now (decision 11). Rows locked by another claim are skipped:
-- that claim's settle looks for itself (next_look). Rows of this batch are left to the relay
-- (outbox_events_key_idx, then a primary key lookup per target: never a scan of the rows
-- waiting with a later process_at).
woken AS (
    UPDATE {table} AS w SET process_at = now()
    FROM (
        SELECT next.id
        FROM (SELECT (SELECT min(later.id) FROM {table} AS later
                      WHERE later.key = f.key AND later.id > f.id
                        AND later.status IN ('pending', 'processing')
                        AND later.deliveries -> d.sink ->> 'status' <> 'delivered') AS id
              FROM settled AS f CROSS JOIN unnest(f.freed) AS d(sink)
              WHERE f.key IS NOT NULL) AS target
        JOIN {table} AS next ON next.id = target.id
        WHERE next.id NOT IN (SELECT id FROM settled)
          AND next.status = 'pending' AND next.process_at > now()
        FOR UPDATE OF next SKIP LOCKED) AS n
    WHERE w.id = n.id)

-- name: lock_keys
-- Before a settle that delivers events to sinks they waited or retried at, or that leaves
-- events waiting behind earlier ones (decision 11): the keys' advisory locks, for this
-- transaction, in one order. The two settles of one key then run one after the other, and
-- the later one sees what the earlier one wrote (woken_behind, next_look). No table.
SELECT pg_advisory_xact_lock(1869573221, k.hash)
FROM (SELECT DISTINCT hashtext(key) AS hash FROM unnest(CAST(%(keys)s AS text[])) AS key
      ORDER BY 1 OFFSET 0) AS k

-- name: settle_leased
-- Settle a batch in one statement. The compare-and-set on lease token means a relay whose
-- lease expired (and whose rows another relay reclaimed) changes nothing. The claim counted
-- an attempt: given back for a row no sink was called for (held, or behind an earlier event
-- of its key). Primary key, through the ids array: joined to the rows document alone, the
-- planner may scan every row in flight instead.
WITH settled AS (
UPDATE {table} AS e
SET status = s.status,
    attempts = e.attempts - (NOT s.attempted)::int,
    process_at = {next_look},
    deliveries = s.deliveries,
    errors = s.errors,
    last_error = s.last_error,
    done_at = CASE WHEN s.status IN ('done', 'failed') THEN now() END,
    locked_by = NULL,
    locked_until = NULL,
    lease_token = NULL,
    suspect = false
FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS s(
    id bigint, token uuid, status text, process_at timestamptz,
    deliveries jsonb, errors jsonb, last_error text, attempted boolean,
    blocked text[], freed text[])
WHERE e.id = s.id AND e.lease_token = s.token AND e.status = 'processing'
  AND e.id = ANY(CAST(%(ids)b AS bigint[]))
RETURNING e.id, e.key, s.freed
), {woken_behind}
SELECT id FROM settled

-- name: settle_leased_alike
-- The same, when every row of the batch settles alike and none reaches a sink it waited at
-- or waits behind an earlier event (the common case: each sink delivered on the first try):
-- the ids and lease tokens as two arrays and one set of values, no per-row document to build
-- and take apart, nothing to wake or look at again. Both arrays go in binary. A row's token
-- is compared with the batch's tokens as a set: each is a random UUID of its own claim, so a
-- row reclaimed by another relay never carries one of them. Primary key (a join to the
-- tokens let the planner scan every row in flight, of every relay, per settle).
UPDATE {table} AS e
SET status = %(status)s,
    attempts = e.attempts - (NOT %(attempted)s)::int,
    process_at = COALESCE(%(process_at)s, e.process_at),
    deliveries = CAST(%(deliveries)s AS jsonb),
    errors = CAST(%(errors)s AS jsonb),
    last_error = %(last_error)s,
    done_at = CASE WHEN %(finished)s THEN now() END,
    locked_by = NULL,
    locked_until = NULL,
    lease_token = NULL,
    suspect = false
WHERE e.id = ANY(CAST(%(ids)b AS bigint[]))
  AND e.lease_token = ANY(CAST(%(tokens)b AS uuid[]))
  AND e.status = 'processing'
RETURNING e.id

-- name: settle_locked
-- Settle a batch claimed under row locks, in the transaction that holds them: the lock
-- guarantees ownership, so no lease token is compared; the attempt is counted here (if a
-- sink was called for the row). The
-- settle's own start time for done_at, not now(): the transaction began at the claim. The
-- batch's record in outbox_claims goes in the same commit (see open_claim). Primary keys,
-- through the ids array (else the planner may scan every pending row).
WITH finished AS (DELETE FROM {claims} WHERE id = %(claim)s), settled AS (
UPDATE {table} AS e
SET status = s.status,
    attempts = e.attempts + s.attempted::int,
    process_at = {next_look},
    deliveries = s.deliveries,
    errors = s.errors,
    last_error = s.last_error,
    done_at = CASE WHEN s.status IN ('done', 'failed') THEN statement_timestamp() END,
    locked_by = NULL,
    locked_until = NULL,
    lease_token = NULL,
    suspect = false
FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS s(
    id bigint, status text, process_at timestamptz,
    deliveries jsonb, errors jsonb, last_error text, attempted boolean,
    blocked text[], freed text[])
WHERE e.id = s.id AND e.status = 'pending' AND e.id = ANY(CAST(%(ids)b AS bigint[]))
RETURNING e.id, e.key, s.freed
), {woken_behind}
SELECT id FROM settled

-- name: settle_locked_alike
-- The same, when every row of the batch settles alike (the common case: each sink delivered
-- on the first try): an id array and one set of values, no per-row document to build and
-- take apart; the ids go in binary, cheaper to build than an array's text. Primary keys.
WITH finished AS (DELETE FROM {claims} WHERE id = %(claim)s)
UPDATE {table} AS e
SET status = %(status)s,
    attempts = e.attempts + %(attempted)s::int,
    process_at = COALESCE(%(process_at)s, e.process_at),
    deliveries = CAST(%(deliveries)s AS jsonb),
    errors = CAST(%(errors)s AS jsonb),
    last_error = %(last_error)s,
    done_at = CASE WHEN %(finished)s THEN statement_timestamp() END,
    locked_by = NULL,
    locked_until = NULL,
    lease_token = NULL,
    suspect = false
WHERE e.id = ANY(CAST(%(ids)b AS bigint[])) AND e.status = 'pending'
RETURNING e.id

-- name: release_claimed
-- Give back rows claimed but not delivered (graceful shutdown): the claim does not count as
-- an attempt. Primary key, compare-and-set on the lease token.
UPDATE {table} AS e
SET status = 'pending', attempts = GREATEST(e.attempts - 1, 0),
    locked_by = NULL, locked_until = NULL, lease_token = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
WHERE e.id = r.id AND e.lease_token = r.token AND e.status = 'processing'

-- fragment: died_while_delivering
-- The error recorded when relay x.relay died while delivering the suspect `e` alone.
'the relay died while delivering it (' || x.relay || '; crash ' || (e.crashes + 1)
    || ' of ' || %(max_attempts)s || ')'

-- fragment: charge_crash
-- The SET list (less attempts) for a row `e` in flight when its relay x.relay died
-- (decision 10). A suspect delivered alone (x.charged) is charged the crash: an error
-- recorded, `crashes` counted, failed at max_attempts. Any other row becomes a suspect, with
-- nothing counted. x.counted: whether the claim already counted the attempt (lease mode).
-- A crash is retried after the retry backoff (base * 2^(crashes - 1), capped), so that a
-- poison event does not take down every relay at once.
status = CASE WHEN x.charged AND e.crashes + 1 >= %(max_attempts)s
              THEN 'failed' ELSE 'pending' END,
process_at = CASE WHEN x.charged
                  THEN now() + make_interval(secs => least(
                      %(backoff_cap)s, %(backoff_base)s * 2 ^ least(e.crashes, 62)))
                  ELSE e.process_at END,
done_at = CASE WHEN x.charged AND e.crashes + 1 >= %(max_attempts)s THEN now() END,
crashes = e.crashes + x.charged::int,
suspect = true,
errors = CASE WHEN x.charged
              THEN e.errors || jsonb_build_array(jsonb_build_object(
                  'at', now(), 'sink', NULL,
                  'attempt', e.attempts + (NOT x.counted)::int,
                  'error', {died_while_delivering}))
              ELSE e.errors END,
last_error = CASE WHEN x.charged THEN {died_while_delivering}
                  ELSE 'in flight when ' || x.relay || ' died or stalled; '
                       || 'to be retried alone, not counted as an attempt' END,
locked_by = NULL, locked_until = NULL, lease_token = NULL

-- name: recover_expired_leases
-- Rows whose lease expired (their relay died or stalled) become claimable again
-- (outbox_events_processing_idx). The claim counted an attempt: a suspect delivered alone
-- keeps it as a crash; any other row gets it back and becomes a suspect (decision 10).
UPDATE {table} AS e
SET attempts = CASE WHEN x.charged THEN e.attempts ELSE GREATEST(e.attempts - 1, 0) END,
    {charge_crash}
FROM (
    SELECT id, suspect AS charged, true AS counted, COALESCE(locked_by, '?') AS relay
    FROM {table}
    WHERE status = 'processing' AND locked_until < now()
) AS x
WHERE e.id = x.id AND e.status = 'processing'
RETURNING e.id, e.status, x.charged

-- name: open_claim
-- Record a lock-mode batch in flight, from a connection other than the batch's, before its
-- sinks are called: if the relay dies, the rollback leaves this record behind
-- (recover_dead_claims); the batch's settle deletes it in the commit. Primary key.
INSERT INTO {claims} (event_ids, suspect) VALUES (%(ids)s, %(suspect)s) RETURNING id

-- name: journal_session
-- The claim journal's connection commits without waiting for the WAL flush: a record lost
-- with the server is never needed (the server's crash rolled its batch back too), and a
-- flush per batch would double a lock-mode batch's commits (no table).
SELECT set_config('synchronous_commit', 'off', false)

-- name: drop_claim
-- Forget a lock-mode batch that ended without a commit while its relay lives (primary key).
DELETE FROM {claims} WHERE id = %(claim)s

-- fragment: relay_gone
-- No connection of this database carries the application_name that the outbox_claims row
-- `c` recorded: its relay is gone, or cut off for now.
NOT EXISTS (
    SELECT 1 FROM pg_stat_activity AS a
    WHERE a.application_name = c.application_name AND a.datname = current_database())

-- name: recover_dead_claims
-- Lock-mode batches whose relay is gone go back as in recover_expired_leases: a suspect
-- delivered alone is charged the crash (the attempt counted too), every other row becomes a
-- suspect. A record is first marked orphaned, and taken back only if its relay is still
-- gone %(grace)s seconds later: a relay that was only cut off (a server restart, terminated
-- sessions) reconnects and forgets its own records meanwhile. Rows no longer pending are
-- left alone. A scan of outbox_claims (a row per batch in flight), pg_stat_activity, and
-- primary keys.
WITH orphaned AS (
    UPDATE {claims} AS c SET orphaned_at = now()
    WHERE c.orphaned_at IS NULL AND {relay_gone}
), dead AS (
    DELETE FROM {claims} AS c
    WHERE c.orphaned_at < now() - make_interval(secs => %(grace)s) AND {relay_gone}
    RETURNING c.application_name, c.event_ids, c.suspect
), x AS (
    SELECT DISTINCT ON (id) id, suspect AS charged, false AS counted,
           substr(application_name, length('outbox relay ') + 1) AS relay
    FROM dead, unnest(event_ids) AS id
    ORDER BY id, suspect DESC
)
UPDATE {table} AS e
SET attempts = e.attempts + x.charged::int,
    {charge_crash}
FROM x
WHERE e.id = x.id AND e.status = 'pending'
RETURNING e.id, e.status, x.charged

-- name: suspects_due
-- Whether suspects are due (outbox_events_suspect_idx): a relay with several workers then
-- makes room to claim one alone.
SELECT EXISTS (
    SELECT 1 FROM {table} WHERE status = 'pending' AND suspect AND process_at <= now())

-- name: purge_done_events
-- Delete done rows older than the retention, a bounded batch at a time (outbox_events_done_idx).
DELETE FROM {table}
WHERE id IN (
    SELECT id FROM {table}
    WHERE status = 'done' AND done_at < now() - make_interval(secs => %(keep)s)
    LIMIT %(limit)s)

-- name: next_due
-- When the next pending row falls due, in seconds from now, and whether due rows are
-- waiting unclaimed (a key fence or a parked key) (outbox_events_pending_idx, both).
SELECT (SELECT EXTRACT(EPOCH FROM (min(process_at) - now()))::float8
        FROM {table} WHERE status = 'pending' AND process_at > now()),
       EXISTS (SELECT 1 FROM {table} WHERE status = 'pending' AND process_at <= now())

-- name: work_outstanding
-- Whether work is left for a draining relay: rows in flight, or due rows a claim may take.
-- Events waiting only on held sinks, or parked behind a failed event of their key, are not
-- due; those behind an event that failed unrouted (a poison) are due but never taken
-- (decision 11) (outbox_events_processing_idx, outbox_events_pending_idx).
SELECT EXISTS (SELECT 1 FROM {table} WHERE status = 'processing')
    OR EXISTS (
        SELECT 1 FROM {table} AS e
        WHERE e.status = 'pending' AND e.process_at <= now() AND {deliverable})

-- name: held_sinks
-- The sinks whose deliveries wait: paused by an operator, or disabled (primary key of
-- outbox_sinks, a handful of rows).
SELECT name FROM {sinks} WHERE disabled_at IS NOT NULL OR paused_at IS NOT NULL

-- name: held_sinks_after_settle
-- As held_sinks, read by a relay that has just settled deliveries waiting for a held sink:
-- FOR SHARE waits for a switch being committed and reads the row as it leaves, so that a
-- resume that did not see the settle is seen here (a handful of rows).
SELECT name FROM {sinks} WHERE disabled_at IS NOT NULL OR paused_at IS NOT NULL FOR SHARE

-- name: disable_sink
-- Switch a sink off, keeping the first reason if it already is (primary key of outbox_sinks).
INSERT INTO {sinks} (name, disabled_at, disabled_reason) VALUES (%(name)s, now(), %(reason)s)
ON CONFLICT (name) DO UPDATE
SET disabled_at = COALESCE({sinks}.disabled_at, now()),
    disabled_reason = COALESCE({sinks}.disabled_reason, EXCLUDED.disabled_reason),
    updated_at = now()

-- fragment: bucket_level
-- The tokens in the rate-limit bucket of the outbox_sinks row `s` as of this statement: what
-- it held, plus %(per_second)s for each second since its last refill, at most %(burst)s (a
-- bucket never taken from is full).
LEAST(%(burst)s::float8, COALESCE(s.rate_tokens, %(burst)s::float8) + %(per_second)s::float8
    * GREATEST(0, extract(epoch FROM statement_timestamp()
                          - COALESCE(s.rate_refilled_at, statement_timestamp()))::float8))

-- name: take_sink_tokens
-- Take up to %(asked)s tokens from the rate-limit bucket of sink %(name)s, shared by every
-- relay (outbox/rate_limit.py, migration 0007): refill it by the time elapsed, grant
-- min(asked, whole tokens held) and return the grant and the tokens left. The row is locked
-- for this statement only; a take that waited on another keeps the later refill time. One row
-- of outbox_sinks by its primary key; the first take creates it with a full bucket.
INSERT INTO {sinks} AS s (name, rate_tokens, rate_refilled_at, rate_granted)
VALUES (%(name)s, %(burst)s::float8 - LEAST(%(asked)s::int, %(burst)s::int),
        statement_timestamp(), LEAST(%(asked)s::int, %(burst)s::int))
ON CONFLICT (name) DO UPDATE
SET rate_granted = LEAST(%(asked)s::int, floor({bucket_level})::int),
    rate_tokens = {bucket_level} - LEAST(%(asked)s::int, floor({bucket_level})::int),
    rate_refilled_at = GREATEST(s.rate_refilled_at, statement_timestamp())
RETURNING rate_granted, rate_tokens

-- fragment: waiting_for_sink
-- The pending row `e` waits, not due before a while, for the sink %(name)s (decision 11):
-- held for it, or behind such an event in its key.
e.status = 'pending' AND e.process_at > now()
  AND e.deliveries -> %(name)s ->> 'status' = 'waiting'

-- name: wake_sink_deliveries
-- Make due now the events waiting for sink %(name)s: a relay that learns a sink it held is
-- switched back on runs this, since it may have held them again after the switch woke
-- them. A scan of the pending rows (outbox_events_pending_idx).
UPDATE {table} AS e SET process_at = now() WHERE {waiting_for_sink}

-- fragment: wake_sink
-- A CTE: once the sink %(name)s is held no more (`switched` returns whether it is free),
-- the events waiting for it look again now. A scan of the pending rows
-- (outbox_events_pending_idx).
woken AS (
    UPDATE {table} AS e SET process_at = now()
    FROM switched
    WHERE switched.free AND {waiting_for_sink})

-- name: enable_sink
-- Switch a sink back on (primary key of outbox_sinks); its waiting deliveries flow unless it
-- is paused too. One row when it was disabled.
WITH switched AS (
    UPDATE {sinks} SET disabled_at = NULL, disabled_reason = NULL, updated_at = now()
    WHERE name = %(name)s AND disabled_at IS NOT NULL
    RETURNING paused_at IS NULL AS free
), {wake_sink}
SELECT 1 FROM switched

-- name: pause_sink
-- Pause a sink, keeping the first pause's time and reason (primary key of outbox_sinks). One
-- row, true when it was not paused before.
INSERT INTO {sinks} (name, paused_at, paused_reason) VALUES (%(name)s, now(), %(reason)s)
ON CONFLICT (name) DO UPDATE
SET paused_at = COALESCE({sinks}.paused_at, now()),
    paused_reason = COALESCE({sinks}.paused_reason, EXCLUDED.paused_reason),
    updated_at = now()
RETURNING paused_at = now()

-- name: resume_sink
-- Resume a paused sink (primary key of outbox_sinks); its waiting deliveries flow unless it
-- is disabled too. One row when it was paused.
WITH switched AS (
    UPDATE {sinks} SET paused_at = NULL, paused_reason = NULL, updated_at = now()
    WHERE name = %(name)s AND paused_at IS NOT NULL
    RETURNING disabled_at IS NULL AS free
), {wake_sink}
SELECT 1 FROM switched

-- name: sinks_changed
-- Tell the relays listening on the channel to read the sinks' switches now (payload 'sinks';
-- no table).
SELECT pg_notify(%(channel)s, 'sinks')

-- name: listen
-- Have NOTIFYs on {channel}, the channel publish notifies, delivered to this connection (no
-- table, no index). {channel} is rendered per call, not per schema.
LISTEN {channel}

-- name: lock_session
-- A lock-mode worker's session: its batch transaction stays open while sinks run, so a
-- server-wide idle_in_transaction_session_timeout is replaced by one above the lease (no index).
SELECT set_config('idle_in_transaction_session_timeout', %(timeout_ms)s, false)

-- name: listener_ping
-- A round trip on the listening connection: a silent network failure shows up here (no
-- table).
SELECT 1

-- name: event_figures
-- For the metrics a maintenance round samples: the events pending, processing and failed,
-- counted as `outbox status` counts them (each by its partial index:
-- outbox_events_pending_idx, outbox_events_processing_idx, outbox_events_failed_idx).
SELECT (SELECT count(*) FROM {table} WHERE status = 'pending'),
       (SELECT count(*) FROM {table} WHERE status = 'processing'),
       (SELECT count(*) FROM {table} WHERE status = 'failed')

-- ===========================================================================================
-- admin (outbox/admin.py)
-- ===========================================================================================
--
-- In the event_filters fragment every condition is optional (a NULL parameter switches it
-- off), so each statement stays one fixed text. Postgres plans the first executions with the
-- actual values, where a switched-off condition folds away.

-- fragment: event_filters
-- The selection shared by listing and repairs. A topic pattern arrives as a regular
-- expression matched against '.' || topic (see outbox.admin.topic_regex). %(live)s leaves
-- out cancelled events (their '*cancelled' deliveries entry, outbox/cancel.py).
(%(ids)s::bigint[] IS NULL OR e.id = ANY(%(ids)s::bigint[]))
AND (%(statuses)s::text[] IS NULL OR e.status = ANY(%(statuses)s::text[]))
AND (%(topic_re)s::text IS NULL OR '.' || e.topic ~ %(topic_re)s::text)
AND (%(key)s::text IS NULL OR e.key = %(key)s::text)
AND (%(sink)s::text IS NULL OR e.deliveries ? %(sink)s::text)
AND (%(sink_status)s::text IS NULL
     OR e.deliveries -> %(sink)s::text ->> 'status' = %(sink_status)s::text)
AND (%(since)s::timestamptz IS NULL OR e.created_at >= %(since)s::timestamptz)
AND (%(until)s::timestamptz IS NULL OR e.created_at < %(until)s::timestamptz)
AND (%(done_before)s::timestamptz IS NULL OR e.done_at < %(done_before)s::timestamptz)
AND (NOT %(live)s::boolean OR NOT e.deliveries ? '*cancelled')

-- fragment: repair_batch
-- The next batch of a plan: matching rows above the last batch, up to the plan's bound, in
-- id order (primary key), locked so that a relay settling one of them meanwhile is waited for
-- and the row re-checked.
SELECT e.id FROM {table} AS e
WHERE e.id > %(after)s AND e.id <= %(upto)s AND {event_filters}
ORDER BY e.id
LIMIT %(limit)s
FOR UPDATE

-- name: database_now
-- The database clock: relative times (10m, 7d) are measured on it, never on this machine's.
SELECT now()

-- name: event_counts
-- Events per topic and status. A full scan: the one statement here whose cost grows with the
-- number of done rows.
SELECT topic, status, count(*) FROM {table} GROUP BY topic, status ORDER BY topic, status

-- name: event_lag
-- The lag: the due pending event that has waited longest. Events waiting on a held sink,
-- or parked behind a failed event of their key, wait for an operator and not for a relay:
-- they are not due, or not deliverable (decision 11) (outbox_events_pending_idx).
SELECT count(*) OVER (), e.id, e.topic, e.process_at, e.created_at,
       EXTRACT(EPOCH FROM now() - e.process_at)::float8
FROM {table} AS e
WHERE e.status = 'pending' AND e.process_at <= now()
  AND {deliverable}
ORDER BY e.process_at, e.id
LIMIT 1

-- name: relay_lag
-- The lag line a relay logs every maintenance round: how many events are due, counted up to
-- %(cap)s, and how long the longest-waiting one has waited (0 when none is), as event_lag
-- counts them. Every relay runs it every round: a count of the whole backlog, sorted, was
-- most of a busy database's time with several relays (outbox_events_pending_idx, both).
SELECT (SELECT count(*) FROM (
            SELECT 1 FROM {table} AS e
            WHERE e.status = 'pending' AND e.process_at <= now() AND {deliverable}
            LIMIT %(cap)s) AS due),
       COALESCE((
            SELECT EXTRACT(EPOCH FROM now() - e.process_at)::float8 FROM {table} AS e
            WHERE e.status = 'pending' AND e.process_at <= now() AND {deliverable}
            ORDER BY e.process_at, e.id
            LIMIT 1), 0)

-- name: parked_keys
-- Parked keys: keys whose oldest unfinished event failed, with how many events wait behind it
-- and how many keys are parked in all (outbox_events_key_idx).
WITH heads AS (
    SELECT DISTINCT ON (e.key) e.key, e.id, e.topic, e.status, e.last_error, e.done_at
    FROM {table} AS e
    WHERE e.key IS NOT NULL AND e.status <> 'done'
    ORDER BY e.key, e.id
)
SELECT h.key, h.id, h.topic, h.last_error, h.done_at,
       (SELECT count(*) FROM {table} AS w
        WHERE w.key = h.key AND w.id > h.id AND w.status <> 'done'),
       count(*) OVER ()
FROM heads AS h
WHERE h.status = 'failed'
ORDER BY h.id
LIMIT %(limit)s

-- name: failing_sinks
-- Sinks with deliveries that have not succeeded, on unfinished events: how many events each
-- waits to retry or has given up on, and the error on the newest such event. Scans the
-- unfinished rows (pending and processing by their partial indexes, failed by the table).
SELECT d.key,
       count(*) FILTER (WHERE d.value ->> 'status' = 'retrying'),
       count(*) FILTER (WHERE d.value ->> 'status' = 'failed'),
       (array_agg(d.value ->> 'last_error' ORDER BY e.id DESC))[1],
       max(e.id)
FROM {table} AS e, jsonb_each(e.deliveries) AS d
WHERE e.status IN ('pending', 'processing', 'failed')
  AND d.value ->> 'status' IN ('retrying', 'failed')
GROUP BY d.key
ORDER BY d.key

-- name: sink_figures
-- Per sink, from its deliveries on the unfinished events only (status <> 'done', each status
-- read on its own): the backlog (deliveries waiting or retrying), the age of the oldest event
-- among them, the events whose delivery failed, and the last error (on the newest unfinished
-- event with one). Pending rows by outbox_events_pending_idx, processing rows by
-- outbox_events_processing_idx, failed rows by outbox_events_failed_idx.
WITH unfinished AS (
    SELECT e.id, e.created_at, e.deliveries FROM {table} AS e WHERE e.status = 'pending'
    UNION ALL
    SELECT e.id, e.created_at, e.deliveries FROM {table} AS e WHERE e.status = 'processing'
    UNION ALL
    SELECT e.id, e.created_at, e.deliveries FROM {table} AS e WHERE e.status = 'failed'
)
SELECT d.key,
       count(*) FILTER (WHERE d.value ->> 'status' IN ('waiting', 'retrying')),
       EXTRACT(EPOCH FROM now() - min(u.created_at)
           FILTER (WHERE d.value ->> 'status' IN ('waiting', 'retrying')))::float8,
       count(*) FILTER (WHERE d.value ->> 'status' = 'failed'),
       (array_agg(d.value ->> 'last_error' ORDER BY u.id DESC)
           FILTER (WHERE d.value ->> 'last_error' IS NOT NULL))[1]
FROM unfinished AS u CROSS JOIN LATERAL jsonb_each(u.deliveries) AS d
WHERE d.key <> '*'
GROUP BY d.key
ORDER BY d.key

-- name: sink_switches
-- Every sink outbox_sinks names, with when and why it was paused or disabled (NULL: not);
-- a sink once switched and switched back on keeps its row (primary key of outbox_sinks, a
-- handful of rows).
SELECT name, paused_at, paused_reason, disabled_at, disabled_reason FROM {sinks} ORDER BY name

-- name: unrouted_events
-- Events whose sinks are not known: not routed yet (never claimed, deliveries '{}': pending
-- by outbox_events_pending_idx, processing by outbox_events_processing_idx), and done events
-- whose topic matched no subscription (deliveries {"*": ...}): all still kept, by a scan of
-- outbox_events_done_idx, and those settled in the last hour, by its range.
SELECT (SELECT count(*) FROM {table}
        WHERE status = 'pending' AND deliveries = '{{}}'::jsonb)
     + (SELECT count(*) FROM {table}
        WHERE status = 'processing' AND deliveries = '{{}}'::jsonb),
       (SELECT count(*) FROM {table}
        WHERE status = 'done' AND done_at IS NOT NULL AND deliveries ? '*'),
       (SELECT count(*) FROM {table}
        WHERE status = 'done' AND done_at >= now() - interval '1 hour' AND deliveries ? '*')

-- name: relay_leases
-- Relays holding leases now: rows in flight per relay, when their leases end, how many have
-- already expired (outbox_events_processing_idx).
SELECT locked_by, count(*), max(locked_until), count(*) FILTER (WHERE locked_until < now())
FROM {table}
WHERE status = 'processing'
GROUP BY locked_by
ORDER BY locked_by

-- name: connected_relays
-- Relays connected to this database now, by name (pg_stat_activity: a role sees the state
-- of its own sessions, and of others' with pg_read_all_stats): their connections, and the
-- age of the oldest transaction among them (in claim mode "lock", a batch in flight).
SELECT substr(application_name, %(prefix_length)s + 1), count(*),
       EXTRACT(EPOCH FROM now() - min(xact_start))::float8
FROM pg_stat_activity
WHERE datname = current_database() AND starts_with(application_name, %(prefix)s)
  AND pid <> pg_backend_pid()
GROUP BY 1
ORDER BY 1

-- name: fence_holder
-- What holds keyed events back (key_fence, decision 9): the oldest transaction with a
-- transaction id in this database (or in none, a rare background process), prepared ones
-- included, and how many due keyed events of this outbox wait behind the fence. One row, or
-- none when no such transaction runs. pg_stat_activity shows another role's state and query
-- only to members of pg_read_all_stats; age(xid) orders by transaction age across wraparound.
WITH holders AS (
    SELECT a.pid, a.datname, a.usename, a.state, a.xact_start AS since, a.query_start,
           left(a.query, 200) AS query, false AS prepared, a.backend_xid AS xid
    FROM pg_stat_activity AS a
    WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
      AND (a.datname = current_database() OR a.datid IS NULL)
    UNION ALL
    SELECT NULL, p.database, p.owner, 'prepared', p.prepared, NULL, p.gid, true, p.transaction
    FROM pg_prepared_xacts AS p
    WHERE p.database = current_database()
)
SELECT h.pid, h.datname, h.usename, h.state, h.prepared, h.since, h.query_start, h.query,
       COALESCE(EXTRACT(EPOCH FROM now() - h.since), 0)::float8,
       (SELECT count(*) FROM {table} AS e
        WHERE e.status = 'pending' AND e.process_at <= now() AND e.key IS NOT NULL
          AND NOT {key_fence})
FROM holders AS h
ORDER BY age(h.xid) DESC
LIMIT 1

-- name: list_events
-- Events matching the filters, newest first, below the keyset cursor %(before)s when given
-- (primary key, scanned backwards).
SELECT e.id, e.topic, e.key, e.status, e.attempts, e.created_at, e.process_at, e.done_at,
       e.last_error, e.deliveries
FROM {table} AS e
WHERE {event_filters}
  AND (%(before)s::bigint IS NULL OR e.id < %(before)s::bigint)
ORDER BY e.id DESC
LIMIT %(limit)s

-- name: show_event
-- One event, every column (primary key).
SELECT id, topic, key, status, attempts, process_at, locked_by, locked_until,
       lease_token::text, payload, headers, deliveries, errors, last_error, dedup_key,
       txid::text, created_at, done_at, crashes, suspect
FROM {table}
WHERE id = %(id)s

-- name: match_repair
-- How many rows a repair would touch, and the highest id among them: the plan's upper bound.
SELECT count(*), COALESCE(max(e.id), 0) FROM {table} AS e WHERE {event_filters}

-- fragment: woken_after_repair
-- A CTE after `repaired` (events retried or purged): later events of their keys that waited
-- behind one of them for a sink it had failed at (process_at 'never') look again now
-- (decision 11). Both see the statement's snapshot, so the repaired rows themselves are not
-- touched twice (outbox_events_key_idx).
woken AS (
    UPDATE {table} AS w SET process_at = now()
    FROM (SELECT key, min(id) AS id FROM repaired WHERE key IS NOT NULL GROUP BY key) AS r
    WHERE w.key = r.key AND w.id > r.id AND w.status = 'pending' AND w.process_at > now())

-- name: retry_batch
-- Retry failed events: pending again, due now, claim and crash counters reset (a suspect
-- stays one: it goes alone). Without a sink every sink that had not acknowledged starts
-- over; with one, only that sink. Delivered sinks stay delivered, so they never see the
-- event twice (primary key, via the batch; outbox_events_key_idx for later events of the
-- retried keys).
WITH batch AS ({repair_batch}), repaired AS (
UPDATE {table} AS e
SET status = 'pending', process_at = now(), done_at = NULL, attempts = 0, crashes = 0,
    deliveries = CASE
        WHEN %(sink)s::text IS NULL THEN COALESCE((
            SELECT jsonb_object_agg(d.key, CASE
                WHEN d.value ->> 'status' IN ('failed', 'retrying') THEN jsonb_build_object(
                    'status', 'retrying', 'attempts', 0, 'last_error', d.value -> 'last_error')
                ELSE d.value END)
            FROM jsonb_each(e.deliveries) AS d), jsonb_build_object())
        ELSE jsonb_set(e.deliveries, ARRAY[%(sink)s::text], jsonb_build_object(
            'status', 'retrying', 'attempts', 0,
            'last_error', e.deliveries -> %(sink)s::text -> 'last_error'))
    END
FROM batch
WHERE e.id = batch.id
RETURNING e.id, e.key
), {woken_after_repair}
SELECT id FROM repaired

-- name: replay_batch
-- Replay done events: pending again, due now, claim and crash counters reset, and the chosen
-- sink's delivery entry removed (or all entries), so the relay delivers there again (primary
-- key).
WITH batch AS ({repair_batch})
UPDATE {table} AS e
SET status = 'pending', process_at = now(), done_at = NULL, attempts = 0, crashes = 0,
    deliveries = CASE
        WHEN %(sink)s::text IS NULL THEN jsonb_build_object()
        ELSE e.deliveries - %(sink)s::text
    END
FROM batch
WHERE e.id = batch.id
RETURNING e.id

-- name: purge_batch
-- Delete finished events (primary key, via the batch); later events of their keys that
-- waited behind a failed one look again.
WITH batch AS ({repair_batch}), repaired AS (
DELETE FROM {table} AS e
USING batch
WHERE e.id = batch.id
RETURNING e.id, e.key
), {woken_after_repair}
SELECT id FROM repaired

-- name: cancel_events
-- Cancel events that must never go out (outbox/cancel.py, decision 12): of the ids given,
-- those pending and not in flight (not in a lock-mode batch recorded in outbox_claims, not
-- locked by a claim: skipped) become `done` with a `*cancelled` entry in their deliveries
-- saying who, when and why, so that key order, retention and every claim treat them as
-- finished. Later pending events of their keys that wait until later look again now; rows
-- cancelled here are left out of that wake. Returns the ids cancelled (primary key, then
-- outbox_events_key_idx for the wake).
WITH target AS (
    SELECT e.id FROM {table} AS e
    WHERE e.id = ANY(CAST(%(ids)s AS bigint[])) AND e.status = 'pending'
      AND e.id NOT IN (SELECT unnest(c.event_ids) FROM {claims} AS c)
    FOR UPDATE SKIP LOCKED
), cancelled AS (
    UPDATE {table} AS e
    SET status = 'done', done_at = now(), suspect = false,
        deliveries = e.deliveries || jsonb_build_object('*cancelled', jsonb_build_object(
            'status', 'cancelled', 'by', COALESCE(%(by)s::text, current_user::text),
            'at', now(), 'reason', %(reason)s::text))
    FROM target
    WHERE e.id = target.id
    RETURNING e.id, e.key
), woken AS (
    UPDATE {table} AS w SET process_at = now()
    FROM (SELECT key, min(id) AS id FROM cancelled WHERE key IS NOT NULL GROUP BY key) AS r
    WHERE w.key = r.key AND w.id > r.id AND w.status = 'pending' AND w.process_at > now()
      AND w.id NOT IN (SELECT id FROM target))
SELECT id FROM cancelled ORDER BY id

-- name: cancel_refusals
-- Why events could not be cancelled: each id's status, lease holder, whether a lock-mode
-- batch holds it (outbox_claims) and its cancellation if it has one; ids with no event
-- return no row (primary key).
SELECT e.id, e.status, e.locked_by, e.locked_until,
       e.status = 'pending' AND e.id IN (SELECT unnest(c.event_ids) FROM {claims} AS c),
       e.deliveries -> '*cancelled'
FROM {table} AS e
WHERE e.id = ANY(CAST(%(ids)s AS bigint[]))
ORDER BY e.id

-- ===========================================================================================
-- dashboard (outbox/dashboard/overview.py): the overview's figures beyond outbox status's
-- ===========================================================================================

-- name: dashboard_session
-- Every dashboard connection, once: read-only when actions are off (%(read_only)s 'on'), so
-- nothing it runs can write; and no JIT, since sink_figures' estimate of jsonb_each's rows
-- (100 per event) puts a large backlog over the JIT thresholds, where compiling cost ~500 ms
-- against ~20 ms of work (bench/dashboard.py, a million rows; no table).
SELECT set_config('jit', 'off', false),
       set_config('default_transaction_read_only', %(read_only)s, false)

-- name: dashboard_topics
-- Per topic: the unfinished events by status, the age of the oldest pending or processing
-- one, and the events settled in the last hour. Each status is read by its own partial index
-- (pending, processing, failed; done by outbox_events_done_idx over the last hour only), so
-- the cost follows the backlog, never the done rows retention keeps.
WITH rows AS (
    SELECT e.topic, e.status, e.created_at FROM {table} AS e WHERE e.status = 'pending'
    UNION ALL
    SELECT e.topic, e.status, e.created_at FROM {table} AS e WHERE e.status = 'processing'
    UNION ALL
    SELECT e.topic, e.status, e.created_at FROM {table} AS e WHERE e.status = 'failed'
    UNION ALL
    SELECT e.topic, e.status, e.created_at FROM {table} AS e
    WHERE e.status = 'done' AND e.done_at >= now() - interval '1 hour'
)
SELECT topic,
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'processing'),
       count(*) FILTER (WHERE status = 'failed'),
       EXTRACT(EPOCH FROM now() - min(created_at)
           FILTER (WHERE status IN ('pending', 'processing')))::float8,
       count(*) FILTER (WHERE status = 'done')
FROM rows
GROUP BY topic
ORDER BY topic

-- name: dashboard_minutes
-- The last %(minutes)s minutes, minute by minute (the current one last): events settled, and
-- the mean and the longest time from publish to settled among them; cancelled events left
-- out. Then the database clock's current minute (outbox_events_done_idx, its range).
SELECT date_trunc('minute', e.done_at), count(*),
       avg(EXTRACT(EPOCH FROM e.done_at - e.created_at))::float8,
       max(EXTRACT(EPOCH FROM e.done_at - e.created_at))::float8
FROM {table} AS e
WHERE e.status = 'done'
  AND e.done_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
  AND NOT e.deliveries ? '*cancelled'
GROUP BY 1
ORDER BY 1

-- name: dashboard_table_health
-- The outbox table as the server's statistics see it: live and dead rows, the last vacuum
-- and autovacuum, and its size with indexes (pg_stat_user_tables, one row).
SELECT s.n_live_tup, s.n_dead_tup, s.last_autovacuum, s.last_vacuum, s.last_autoanalyze,
       pg_total_relation_size(s.relid)
FROM pg_stat_user_tables AS s
WHERE s.schemaname = %(schema)s AND s.relname = 'outbox_events'

-- ===========================================================================================
-- publish (the event writer)
-- ===========================================================================================
-- Rendered once per (schema, channel) by outbox/_writer.py: {channel} is the channel that
-- wakes the relays, as a literal; {ids_column} the column the session hook reads ids from.

-- fragment: insert_event_rows
-- Inserts the events given as one JSON array, in their order (`n`), skipping any whose
-- dedup_key already exists (outbox_events_dedup_key_idx); returns their ids and dedup keys.
INSERT INTO {table} (topic, key, payload, headers, process_at, dedup_key)
SELECT r.topic, r.key, r.payload, COALESCE(r.headers, '{{}}'::jsonb),
       COALESCE(r.process_at, now() + make_interval(secs => COALESCE(r.delay, 0))),
       r.dedup_key
FROM jsonb_to_recordset(CAST(%(outbox_rows)s AS jsonb)) AS r(
    n int, topic text, key text, payload jsonb, headers jsonb,
    process_at timestamptz, delay float8, dedup_key text)
ORDER BY r.n
ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
RETURNING id, dedup_key

-- fragment: insert_undeduplicated_event_rows
-- The same for events none of which has a dedup key: no ON CONFLICT, whose speculative
-- insertion costs every row a check of outbox_events_dedup_key_idx and one more WAL record;
-- returns their ids.
INSERT INTO {table} (topic, key, payload, headers, process_at)
SELECT r.topic, r.key, r.payload, COALESCE(r.headers, '{{}}'::jsonb),
       COALESCE(r.process_at, now() + make_interval(secs => COALESCE(r.delay, 0)))
FROM jsonb_to_recordset(CAST(%(outbox_rows)s AS jsonb)) AS r(
    n int, topic text, key text, payload jsonb, headers jsonb,
    process_at timestamptz, delay float8)
ORDER BY r.n
RETURNING id

-- name: insert_events
-- Inserts a batch of events (insert_event_rows) and, if it inserted any, NOTIFYs the relays:
-- once per statement, and Postgres folds a transaction's identical notifications into one,
-- sent at commit (docs/decisions/0008). Ids in insert order (outbox_events_dedup_key_idx).
WITH written AS ({insert_event_rows}),
notified AS (SELECT pg_notify({channel}, '') WHERE EXISTS (SELECT FROM written))
SELECT id, dedup_key FROM written LEFT JOIN notified ON true ORDER BY id

-- name: insert_undeduplicated_events
-- The same for a batch without dedup keys (insert_undeduplicated_event_rows): the ids come
-- back as one row, in insert order as text separated by commas (NULL if a trigger skipped
-- every row), not as a row each. No index read.
WITH written AS ({insert_undeduplicated_event_rows}),
notified AS (SELECT pg_notify({channel}, '') WHERE EXISTS (SELECT FROM written))
SELECT array_to_string(array_agg(id ORDER BY id), ',') FROM written LEFT JOIN notified ON true

-- name: events_of_dedup_keys
-- The ids of the events that already held the dedup keys a batch skipped
-- (outbox_events_dedup_key_idx).
SELECT id, dedup_key FROM {table} WHERE dedup_key = ANY(CAST(%(keys)s AS text[]))

-- The session hook writes a flush's events inside the flush's first INSERT ... RETURNING
-- (docs/decisions/0006): one of the flush_insert_*event* blocks goes in front of that
-- statement, and flush_insert_event_id(s) is added to its RETURNING list, last. The NOTIFY is
-- evaluated with the ids, once.

-- name: flush_insert_one_event
-- Goes in front of a flush's INSERT: inserts one event without headers or schedule from plain
-- parameters (the table's defaults for the rest) and readies the NOTIFY. No index read.
WITH _outbox_written AS (
    INSERT INTO {table} (topic, key, payload)
    VALUES (%(outbox_topic)s, %(outbox_key)s, CAST(%(outbox_payload)s AS jsonb))
    RETURNING id),
_outbox_notified AS (SELECT pg_notify({channel}, ''))

-- name: flush_insert_one_event_with_headers
-- The same for one event with headers but no schedule. No index read.
WITH _outbox_written AS (
    INSERT INTO {table} (topic, key, payload, headers)
    VALUES (%(outbox_topic)s, %(outbox_key)s, CAST(%(outbox_payload)s AS jsonb),
            CAST(%(outbox_headers)s AS jsonb))
    RETURNING id),
_outbox_notified AS (SELECT pg_notify({channel}, ''))

-- name: flush_insert_one_scheduled_event
-- The same for one event with a process_at or a delay (on the database clock), headers or
-- not. No index read.
WITH _outbox_written AS (
    INSERT INTO {table} (topic, key, payload, headers, process_at)
    VALUES (%(outbox_topic)s, %(outbox_key)s, CAST(%(outbox_payload)s AS jsonb),
            COALESCE(CAST(%(outbox_headers)s AS jsonb), '{{}}'::jsonb),
            COALESCE(CAST(%(outbox_process_at)s AS timestamptz),
                     now() + make_interval(secs => CAST(%(outbox_delay)s AS float8))))
    RETURNING id),
_outbox_notified AS (SELECT pg_notify({channel}, ''))

-- name: flush_insert_events
-- Goes in front of a flush's INSERT: inserts several events given as one JSON array
-- (insert_undeduplicated_event_rows: none has a dedup key, so no index read) and readies the
-- NOTIFY.
WITH _outbox_written AS ({insert_undeduplicated_event_rows}),
_outbox_notified AS (SELECT pg_notify({channel}, ''))

-- name: flush_insert_event_id
-- Added to the flush's RETURNING list: the one event's id as text; evaluating it sends the
-- NOTIFY readied in front. No index read.
(SELECT id::text FROM _outbox_written LEFT JOIN _outbox_notified ON true) AS {ids_column}

-- name: flush_insert_event_ids
-- The same for several events: their ids in insert order, as text separated by commas.
(SELECT array_to_string(array_agg(id ORDER BY id), ',')
 FROM _outbox_written LEFT JOIN _outbox_notified ON true) AS {ids_column}

-- name: flush_insert_lookup_ids
-- The ids of the newest events this transaction wrote, when the INSERT that carried them
-- returned no row (a BEFORE trigger on its table skipped it): the table's sequence bounds the
-- primary key scan (outbox_events_pkey), the transaction id picks this transaction's rows.
-- No row returned also means that INSERT's NOTIFY was not evaluated: this statement sends it.
WITH newest AS (
    SELECT id FROM {table}
    WHERE id <= currval(pg_get_serial_sequence({table_name}, 'id'))
      AND txid = pg_current_xact_id()
    ORDER BY id DESC
    LIMIT %(count)s),
notified AS (SELECT pg_notify({channel}, ''))
SELECT id FROM newest LEFT JOIN notified ON true ORDER BY id

-- ===========================================================================================
-- postgres sink (outbox/postgres_sink.py): {target} is the sink's table
-- ===========================================================================================

-- name: create_sink_table
-- Creates the sink's schema and table if they are missing, under a transaction-level
-- advisory lock on {lock_key} (a literal) so that concurrent relays do not race on the
-- catalog. The primary key on event_id makes a repeated delivery a no-op.
SELECT pg_advisory_xact_lock(hashtextextended({lock_key}, 0));
CREATE SCHEMA IF NOT EXISTS {target_schema};
CREATE TABLE IF NOT EXISTS {target} (
    event_id     bigint      NOT NULL PRIMARY KEY,
    topic        text        NOT NULL,
    key          text,
    payload      jsonb       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    created_at   timestamptz NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now()
)

-- name: insert_sink_rows
-- Inserts a batch of events given as a JSON array; an event already there is left alone
-- (the primary key on event_id).
INSERT INTO {target} (event_id, topic, key, payload, headers, created_at)
SELECT r.event_id, r.topic, r.key, r.payload, r.headers, r.created_at
FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS r(
    event_id bigint, topic text, key text, payload jsonb, headers jsonb, created_at timestamptz)
ON CONFLICT (event_id) DO NOTHING

-- ===========================================================================================
-- migrate (outbox/migrate.py): bookkeeping around the migration files
-- ===========================================================================================

-- name: lock_migrations
-- Serialises concurrent migration runs on one schema until the transaction ends; the
-- parameter lock_key names the schema.
SELECT pg_advisory_xact_lock(hashtextextended(%(lock_key)s, 0))

-- name: create_migrations_table
-- Creates the schema and its outbox_migrations table (one row per applied migration,
-- primary key on version) if they are missing.
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {migrations} (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_migrations_pkey PRIMARY KEY (version)
)

-- name: applied_migrations
-- The versions already applied to the schema (a scan of outbox_migrations, a few rows).
SELECT version FROM {migrations}

-- name: use_schema
-- Makes the migration files' unqualified names refer to the schema, for this transaction.
SET LOCAL search_path TO {schema}

-- name: record_migration
-- Records a migration as applied ({version} and {migration_name} are literals, so that the
-- script printed by `outbox migrate --sql` holds them); the primary key on version refuses
-- a second record.
INSERT INTO {migrations} (version, name) VALUES ({version}, {migration_name})

-- ===========================================================================================
-- demo (outbox/demo.py): its database, what it reports, and what it tells the reader to run.
-- {database} is the demo's database, {target} the demo postgres sink's table.
-- ===========================================================================================

-- name: demo_drop_database
-- Drops the database of an earlier demo, closing its connections (no index: DDL).
DROP DATABASE IF EXISTS {database} WITH (FORCE)

-- name: demo_create_database
-- Creates the demo's database afresh (no index: DDL).
CREATE DATABASE {database}

-- name: demo_next_id
-- The lowest id the demo's events can have: one past the largest so far (primary key).
SELECT COALESCE(max(id), 0) + 1 FROM {table}

-- name: demo_statuses
-- The demo's events counted by status (primary key range from the demo's first id).
SELECT status, count(*) FROM {table} WHERE id >= %(first_id)s GROUP BY status

-- name: demo_topic_count
-- The demo's events of one topic (primary key range from the demo's first id).
SELECT count(*) FROM {table} WHERE topic = %(topic)s AND id >= %(first_id)s

-- name: demo_table_exists
-- The table %(table)s if it exists, else NULL (the catalog).
SELECT to_regclass(%(table)s)

-- name: demo_sink_table_ids
-- The event ids the demo's postgres sink wrote (a sequential scan: a demo's few rows).
SELECT event_id FROM {target}

-- name: demo_peek_events
-- Shown to the reader to run with psql: a few events and their deliveries (primary key).
SELECT id, topic, status, deliveries FROM {table} LIMIT 5

-- name: demo_peek_sink_table
-- Shown to the reader to run with psql: a few rows of the demo's postgres sink table.
SELECT event_id, topic FROM {target} LIMIT 5
