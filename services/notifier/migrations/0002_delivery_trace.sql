-- The W3C trace context of the event a delivery is for (its notifier.enqueue span), so each
-- attempt is a span of the transaction's trace. NULL for digests and for rows from before.
ALTER TABLE notification_outbox ADD COLUMN traceparent text;
