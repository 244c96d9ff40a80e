-- Per-sink state that outlives a relay: a sink disabled by a 410 Gone (or an operator)
-- stays disabled until `outbox sinks enable NAME`.

CREATE TABLE outbox_sinks (
    name             text        NOT NULL,
    disabled_at      timestamptz,
    disabled_reason  text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_sinks_pkey PRIMARY KEY (name)
);
