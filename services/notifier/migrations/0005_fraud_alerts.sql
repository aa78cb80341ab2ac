-- posflow-notifier schema, version 5: fraud alerts kept as part of the merchant's record (the
-- merchant API lists them and shows them with the transactions they name). The notifier consumes
-- every alert already; it stores each once (by alert id), whether or not the merchant asked to
-- be told. No card token: merchants never see it.
CREATE TABLE fraud_alerts (
    alert_id                 text PRIMARY KEY,
    merchant_id              text NOT NULL,
    terminal_id              text NOT NULL,
    rule_id                  text NOT NULL,
    severity                 text NOT NULL,
    score                    double precision NOT NULL,
    evidence_transaction_ids text[] NOT NULL,
    detected_at              timestamptz NOT NULL,
    stored_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fraud_alerts_merchant_detected ON fraud_alerts (merchant_id, detected_at);
CREATE INDEX fraud_alerts_evidence ON fraud_alerts USING gin (evidence_transaction_ids);
GRANT SELECT, INSERT ON fraud_alerts TO posflow_notifier;
