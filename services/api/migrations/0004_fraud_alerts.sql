-- posflow-api schema, version 4: the merchant's fraud alerts (the notifier's migration 5 keeps
-- them), under row-level security like the rest of the merchant's record.
ALTER TABLE fraud_alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY notifier_all ON fraud_alerts TO posflow_notifier USING (true) WITH CHECK (true);
CREATE POLICY api_merchant ON fraud_alerts FOR SELECT TO posflow_api
    USING (merchant_id = current_setting('posflow.merchant', true));
GRANT SELECT ON fraud_alerts TO posflow_api;
