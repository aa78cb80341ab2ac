-- posflow-api schema, version 3: reports. A merchant asks for one (POST, with an
-- Idempotency-Key); any replica's runner claims it, streams the rows out of the database in
-- chunks (bounded memory), stores the file in chunks, announces it with a signed report.ready
-- webhook through the notifier's outbox, and the merchant downloads and acknowledges it.

CREATE TABLE api_reports (
    id              text PRIMARY KEY,          -- 'rpt_' + 16 hex
    merchant_id     text NOT NULL,
    idempotency_key text NOT NULL,
    requested_by    text NOT NULL,             -- the key id
    period_from     timestamptz NOT NULL,
    period_to       timestamptz NOT NULL,
    format          text NOT NULL CHECK (format IN ('csv', 'json')),
    status          text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'ready', 'failed')),
    row_count       bigint,
    byte_count      bigint,
    sha256          text,
    -- Count and amount per currency and type, JSON, computed while the rows streamed out.
    totals          text,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    ready_at        timestamptz,
    acknowledged_at timestamptz,
    acknowledged_by text,
    lease_owner     text,
    lease_until     timestamptz,
    UNIQUE (merchant_id, idempotency_key)
);
CREATE INDEX api_reports_queued ON api_reports (created_at) WHERE status IN ('queued', 'running');
CREATE INDEX api_reports_unacknowledged ON api_reports (ready_at) WHERE status = 'ready' AND acknowledged_at IS NULL;

CREATE TABLE api_report_chunks (
    report_id text NOT NULL REFERENCES api_reports (id) ON DELETE CASCADE,
    n         integer NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (report_id, n)
);

GRANT SELECT, INSERT, UPDATE ON api_reports TO posflow_api;
GRANT SELECT, INSERT, DELETE ON api_report_chunks TO posflow_api;
ALTER TABLE api_reports ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_report_chunks ENABLE ROW LEVEL SECURITY;
CREATE POLICY api_merchant ON api_reports FOR ALL TO posflow_api
    USING (merchant_id = current_setting('posflow.merchant', true))
    WITH CHECK (merchant_id = current_setting('posflow.merchant', true));
CREATE POLICY api_merchant ON api_report_chunks FOR ALL TO posflow_api
    USING (EXISTS (SELECT 1 FROM api_reports r WHERE r.id = report_id))
    WITH CHECK (EXISTS (SELECT 1 FROM api_reports r WHERE r.id = report_id));

-- The runners find work across merchants through this function only: it leases the oldest
-- report that is queued (or whose runner's lease ran out) and says whose it is.
CREATE FUNCTION posflow_claim_report(owner text, lease_secs double precision)
RETURNS TABLE (id text, merchant_id text)
LANGUAGE sql VOLATILE SECURITY DEFINER AS $$
    UPDATE api_reports r SET status = 'running', lease_owner = owner,
           lease_until = now() + make_interval(secs => lease_secs)
     WHERE r.id = (SELECT q.id FROM api_reports q
                    WHERE q.status = 'queued' OR (q.status = 'running' AND q.lease_until < now())
                    ORDER BY q.created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING r.id, r.merchant_id
$$;

-- report.ready goes out like every other webhook: a row in the notifier's outbox (signed,
-- retried, audited by the notifier), for the merchant in scope, if it has a webhook.
CREATE FUNCTION posflow_enqueue_report_ready(report_id text, idempotency_key text, body bytea)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER AS $$
    INSERT INTO notification_outbox (idempotency_key, merchant_id, channel, event_type, priority, content_type, body, event_id)
    SELECT idempotency_key, p.merchant_id, 'webhook', 'report.ready', 1, 'application/json', body, report_id
      FROM merchant_preferences p
     WHERE p.merchant_id = current_setting('posflow.merchant', true) AND p.webhook_url IS NOT NULL
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING true
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION posflow_claim_report(text, double precision) SET search_path = %I', current_schema());
    EXECUTE format('ALTER FUNCTION posflow_enqueue_report_ready(text, text, bytea) SET search_path = %I', current_schema());
END $$;
REVOKE ALL ON FUNCTION posflow_claim_report(text, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION posflow_enqueue_report_ready(text, text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION posflow_claim_report(text, double precision) TO posflow_api;
GRANT EXECUTE ON FUNCTION posflow_enqueue_report_ready(text, text, bytea) TO posflow_api;
