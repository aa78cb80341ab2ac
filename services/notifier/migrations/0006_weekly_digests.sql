-- posflow-notifier schema, version 6: digests up to weekly (the portal offers hourly, daily and
-- weekly). Periods of a week start on Monday 00:00 UTC (digest::period_end).
ALTER TABLE merchant_preferences DROP CONSTRAINT merchant_preferences_digest_every_secs_check;
ALTER TABLE merchant_preferences ADD CONSTRAINT merchant_preferences_digest_every_secs_check
    CHECK (digest_every_secs BETWEEN 10 AND 604800);
