-- posflow-api schema, version 2: notification events, their attempts and redelivery; webhook
-- secret rotation with an overlap. Needs the notifier's migration 4 (its new table and columns).

ALTER TABLE notification_attempts ENABLE ROW LEVEL SECURITY;
CREATE POLICY notifier_all ON notification_attempts TO posflow_notifier USING (true) WITH CHECK (true);
CREATE POLICY api_merchant ON notification_attempts FOR SELECT TO posflow_api
    USING (merchant_id = current_setting('posflow.merchant', true));
GRANT SELECT ON notification_attempts TO posflow_api;
GRANT SELECT (webhook_secret_previous_until) ON merchant_preferences TO posflow_api;

-- Redelivery: the API may not write the notifier's outbox; this function does one thing —
-- makes finished deliveries of the merchant in scope due again, on the same row under the same
-- idempotency key, with a fresh attempt budget — and returns the rows it changed.
CREATE FUNCTION posflow_redeliver(ids bigint[]) RETURNS SETOF bigint
LANGUAGE sql VOLATILE SECURITY DEFINER AS $$
    UPDATE notification_outbox
       SET status = 'pending', attempts = 0, next_attempt_at = now(), finished_at = NULL,
           last_error = NULL, lease_owner = NULL, lease_until = NULL, redelivered_at = now()
     WHERE id = ANY (ids) AND status <> 'pending'
       AND merchant_id = current_setting('posflow.merchant', true)
    RETURNING id
$$;

-- Rotation: the current secret becomes the previous one, signing alongside the new until
-- now() + overlap. Reads the sealed secret the API's role may not read.
CREATE FUNCTION posflow_rotate_webhook_secret(new_sealed text, overlap interval) RETURNS timestamptz
LANGUAGE sql VOLATILE SECURITY DEFINER AS $$
    UPDATE merchant_preferences
       SET webhook_secret_previous = webhook_secret, webhook_secret_previous_until = now() + overlap,
           webhook_secret = new_sealed, updated_at = now()
     WHERE merchant_id = current_setting('posflow.merchant', true) AND webhook_secret IS NOT NULL
    RETURNING webhook_secret_previous_until
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION posflow_redeliver(bigint[]) SET search_path = %I', current_schema());
    EXECUTE format('ALTER FUNCTION posflow_rotate_webhook_secret(text, interval) SET search_path = %I', current_schema());
END $$;
REVOKE ALL ON FUNCTION posflow_redeliver(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION posflow_rotate_webhook_secret(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION posflow_redeliver(bigint[]) TO posflow_api;
GRANT EXECUTE ON FUNCTION posflow_rotate_webhook_secret(text, interval) TO posflow_api;
