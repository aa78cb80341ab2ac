-- posflow-notifier's tables. Ledger: notifier_schema_migrations.

-- How each merchant wants its data. Written by `posflow-notifier merchants apply`, read by every
-- notifier replica (reloaded every --preferences-refresh).
CREATE TABLE merchant_preferences (
    merchant_id       text PRIMARY KEY,
    mode              text NOT NULL CHECK (mode IN ('per-event', 'digest')),
    digest_every_secs integer CHECK (digest_every_secs BETWEEN 10 AND 86400),
    format            text NOT NULL CHECK (format IN ('json', 'csv')),
    events            text[] NOT NULL,
    webhook_url       text,
    webhook_secret    text,
    emails            text[] NOT NULL DEFAULT '{}',
    risk_emails       text[] NOT NULL DEFAULT '{}',
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((webhook_url IS NULL) = (webhook_secret IS NULL)),
    CHECK (mode = 'per-event' OR digest_every_secs IS NOT NULL)
);

-- The outbox: one row per delivery (event x channel). The idempotency key is derived from the
-- event, so a redelivered Kafka record adds nothing, and it is sent on every attempt.
-- Replicas claim due rows with FOR UPDATE SKIP LOCKED and hold them under a lease.
CREATE TABLE notification_outbox (
    id               bigserial PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    merchant_id      text NOT NULL,
    channel          text NOT NULL CHECK (channel IN ('webhook', 'email')),
    event_type       text NOT NULL,
    -- 0 = fraud alerts, 1 = everything else: lower is claimed first.
    priority         smallint NOT NULL,
    -- Email: subject, text body and an optional attachment. Webhook: the request body.
    subject          text,
    content_type     text NOT NULL,
    body             bytea NOT NULL,
    attachment_name  text,
    attachment_type  text,
    attachment       bytea,
    -- Email to the risk contacts rather than the ordinary addresses.
    risk_contact     boolean NOT NULL DEFAULT false,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_until      timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
-- Claims go merchant by merchant (each merchant's queue in order: fraud alerts first, then by
-- due time), so a claim reads only the rows it takes, however deep other merchants' backlogs.
-- A queue table: every row is updated twice or more (claim, settle). Room on each page keeps
-- the claim's update on the same page (HOT), and vacuum runs early so claims do not wade
-- through dead index entries.
ALTER TABLE notification_outbox SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);
CREATE INDEX notification_outbox_due ON notification_outbox (merchant_id, priority, next_attempt_at) WHERE status = 'pending';
CREATE INDEX notification_outbox_finished ON notification_outbox (finished_at) WHERE status <> 'pending';

-- Transactions of digest-mode merchants waiting for (or listed in) a digest. period_end is set
-- when a digest claims the row: each transaction is in exactly one digest.
CREATE TABLE digest_items (
    merchant_id      text NOT NULL,
    transaction_id   text NOT NULL,
    received_at      timestamptz NOT NULL,
    transaction_time timestamptz NOT NULL,
    terminal_id      text NOT NULL,
    type             text NOT NULL,
    amount_minor     bigint NOT NULL,
    currency         text NOT NULL,
    entry_mode       text NOT NULL,
    card_last4       text,
    auth_code        text,
    period_end       timestamptz,
    PRIMARY KEY (merchant_id, transaction_id)
);
CREATE INDEX digest_items_open ON digest_items (merchant_id, received_at) WHERE period_end IS NULL;

-- One row per digest sent: the primary key is what stops a period being sent twice, whichever
-- replica gets there first.
CREATE TABLE digests (
    merchant_id  text NOT NULL,
    period_end   timestamptz NOT NULL,
    period_start timestamptz NOT NULL,
    items        integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, period_end)
);
