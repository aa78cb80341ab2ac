-- posflow-api's tables (ledger: api_schema_migrations) and the second wall around merchants'
-- data: row-level security on every table the API reads (docs/api.md, "Tenancy").
--
-- Runs after storage's and notifier's migrations (it secures their tables); posflow-api
-- migrate says so if they are missing. The role migrating owns every table, so it is not
-- subject to these policies; the stages' own roles get explicit "everything" policies, so
-- turning RLS on changes nothing for them.

-- API keys. The secret is shown once, at creation; only its SHA-256 is kept (the secret is 256
-- random bits, so a plain hash is not guessable; a slow hash would cost every request).
CREATE TABLE api_keys (
    id           text PRIMARY KEY,            -- the visible prefix, 'pk_' + 12 hex
    secret_hash  bytea NOT NULL,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('owner', 'finance', 'developer', 'auditor', 'operator')),
    -- The merchants the key may act for (a chain's key lists several). Operator keys list none:
    -- they reach any merchant, each request stating a reason.
    merchants    text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    revoked_by   text,
    last_used_at timestamptz,
    CHECK ((role = 'operator') = (cardinality(merchants) = 0))
);
CREATE INDEX api_keys_merchants ON api_keys USING gin (merchants);

-- The audit trail: one row per request (served or refused) and per operator CLI action.
-- Append-only for the API's role; tamper-evident for everyone: `hash` is SHA-256 over the
-- previous row's hash and this row's fields (posflow_api::audit::Record::hash), and seq has no
-- gaps, so `posflow-admin audit verify` finds an altered, inserted or deleted row.
CREATE TABLE api_audit (
    seq         bigint PRIMARY KEY,
    at_ms       bigint NOT NULL,
    actor       text NOT NULL,   -- key id, 'operator:<name>' for the CLI, '' when unauthenticated
    role        text NOT NULL,
    merchant_id text NOT NULL,   -- '' when the request named none
    action      text NOT NULL,   -- e.g. transactions.search, settings.update, auth.refused
    resource    text NOT NULL,   -- method and path
    filter      text NOT NULL,   -- the query as JSON
    row_count   integer NOT NULL,
    status      integer NOT NULL,
    outcome     text NOT NULL,
    source      text NOT NULL,
    request_id  text NOT NULL,
    reason      text NOT NULL,   -- an operator's stated reason
    before      text,            -- changes: JSON before and after, secrets never
    after       text,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX api_audit_merchant ON api_audit (merchant_id, seq);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'posflow_api') THEN
        CREATE ROLE posflow_api NOLOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO posflow_api', current_schema());
END $$;

-- Read the data; write only the API's own tables — and the merchant's delivery settings, which
-- are what the API exists to change (rows of the merchant in scope only; the sealed webhook
-- secret can be written, never read back).
GRANT SELECT ON transactions, transaction_line_items, rejections, notification_outbox TO posflow_api;
GRANT SELECT (merchant_id, mode, digest_every_secs, format, events, webhook_url, emails, risk_emails, updated_at),
      INSERT, UPDATE ON merchant_preferences TO posflow_api;
GRANT SELECT, INSERT, UPDATE ON api_keys TO posflow_api;
GRANT SELECT, INSERT ON api_audit TO posflow_api;
GRANT SELECT ON api_schema_migrations TO posflow_api;

-- Row-level security. The API sets posflow.merchant (SET LOCAL, per transaction) to the one
-- merchant a request may see — its key's scope intersected with the merchant it named — and
-- these policies let it see nothing else, whatever the SQL says. Unset, it sees nothing.
ALTER TABLE transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE transaction_line_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE rejections ENABLE ROW LEVEL SECURITY;
ALTER TABLE notification_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE merchant_preferences ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_audit ENABLE ROW LEVEL SECURITY;

CREATE POLICY storage_all ON transactions TO posflow_storage USING (true) WITH CHECK (true);
CREATE POLICY storage_all ON transaction_line_items TO posflow_storage USING (true) WITH CHECK (true);
CREATE POLICY storage_all ON rejections TO posflow_storage USING (true) WITH CHECK (true);
CREATE POLICY notifier_all ON notification_outbox TO posflow_notifier USING (true) WITH CHECK (true);
CREATE POLICY notifier_all ON merchant_preferences TO posflow_notifier USING (true) WITH CHECK (true);

CREATE POLICY api_merchant ON transactions FOR SELECT TO posflow_api
    USING (merchant_id = current_setting('posflow.merchant', true));
-- Line items carry no merchant: theirs is their transaction's (itself under RLS).
CREATE POLICY api_merchant ON transaction_line_items FOR SELECT TO posflow_api
    USING (EXISTS (SELECT 1 FROM transactions t WHERE t.transaction_id = transaction_line_items.transaction_id));
CREATE POLICY api_merchant ON rejections FOR SELECT TO posflow_api
    USING (merchant_id = current_setting('posflow.merchant', true));
CREATE POLICY api_merchant ON notification_outbox FOR SELECT TO posflow_api
    USING (merchant_id = current_setting('posflow.merchant', true));
CREATE POLICY api_merchant ON merchant_preferences FOR ALL TO posflow_api
    USING (merchant_id = current_setting('posflow.merchant', true))
    WITH CHECK (merchant_id = current_setting('posflow.merchant', true));
-- Keys: a merchant's owner sees and revokes the keys of its merchant. Authentication looks a key
-- up by id before any merchant is known: posflow.auth_key names the one key it may read.
CREATE POLICY api_merchant ON api_keys FOR ALL TO posflow_api
    USING (current_setting('posflow.merchant', true) = ANY (merchants)
           OR id = current_setting('posflow.auth_key', true))
    WITH CHECK (current_setting('posflow.merchant', true) = ANY (merchants)
                OR id = current_setting('posflow.auth_key', true));
-- Audit: written for anyone (refusals have no merchant), read for the merchant in scope. The
-- chain's last hash is read through posflow_audit_tail(), which returns nothing else.
CREATE POLICY api_append ON api_audit FOR INSERT TO posflow_api WITH CHECK (true);
CREATE POLICY api_merchant ON api_audit FOR SELECT TO posflow_api
    USING (merchant_id = current_setting('posflow.merchant', true));

CREATE FUNCTION posflow_audit_tail() RETURNS TABLE (seq bigint, hash bytea)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT seq, hash FROM api_audit ORDER BY seq DESC LIMIT 1
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION posflow_audit_tail() SET search_path = %I', current_schema());
END $$;
REVOKE ALL ON FUNCTION posflow_audit_tail() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION posflow_audit_tail() TO posflow_api;

-- The relay to pos.audit: how far the table has been copied (one row). The relay reads rows of
-- every merchant through posflow_audit_since(), which returns rows after a mark and nothing
-- else — the API's role cannot otherwise read another merchant's audit rows.
CREATE TABLE api_audit_relay (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    relayed_seq bigint NOT NULL
);
INSERT INTO api_audit_relay (relayed_seq) VALUES (0);
GRANT SELECT, UPDATE ON api_audit_relay TO posflow_api;

CREATE FUNCTION posflow_audit_since(after_seq bigint, max_rows bigint) RETURNS SETOF api_audit
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT * FROM api_audit WHERE seq > after_seq ORDER BY seq LIMIT max_rows
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION posflow_audit_since(bigint, bigint) SET search_path = %I', current_schema());
END $$;
REVOKE ALL ON FUNCTION posflow_audit_since(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION posflow_audit_since(bigint, bigint) TO posflow_api;
