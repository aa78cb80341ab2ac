-- posflow-notifier schema, version 4: what merchants see of their deliveries through the merchant
-- API (docs/api.md, "Events"), and webhook secret rotation with an overlap.

-- The event a delivery is for: the transaction id, the fraud alert id, or the digest period's end
-- (RFC 3339). NULL for rows from before.
ALTER TABLE notification_outbox ADD COLUMN event_id text;
-- Set when the merchant asked for the delivery again (the same row, the same idempotency key).
ALTER TABLE notification_outbox ADD COLUMN redelivered_at timestamptz;
CREATE INDEX notification_outbox_merchant_created ON notification_outbox (merchant_id, created_at);
CREATE INDEX notification_outbox_merchant_event ON notification_outbox (merchant_id, event_id);

-- Every attempt of every delivery: when, how it went, how long it took, why it failed. Pruned
-- with its delivery.
CREATE TABLE notification_attempts (
    id          bigserial PRIMARY KEY,
    outbox_id   bigint NOT NULL REFERENCES notification_outbox (id) ON DELETE CASCADE,
    merchant_id text NOT NULL,
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    outcome     text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed')),
    -- The HTTP status when the endpoint answered with one that is not 2xx; NULL otherwise.
    status_code integer,
    duration_ms integer NOT NULL,
    error       text
);
CREATE INDEX notification_attempts_outbox ON notification_attempts (outbox_id);

-- Rotation: during the overlap every webhook is signed under the new secret and this one
-- (sealed like webhook_secret), so receivers switch without a gap.
ALTER TABLE merchant_preferences ADD COLUMN webhook_secret_previous text;
ALTER TABLE merchant_preferences ADD COLUMN webhook_secret_previous_until timestamptz;

GRANT SELECT, INSERT, DELETE ON notification_attempts TO posflow_notifier;
GRANT USAGE ON SEQUENCE notification_attempts_id_seq TO posflow_notifier;
