-- The notifier's least privilege (docs/notifier.md): it runs as a login that is a member of
-- posflow_notifier, which may use its own tables and nothing else (not storage's, not the
-- schema). The role migrating owns everything. Creating the group role needs CREATEROLE; an
-- operator may create it beforehand instead.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'posflow_notifier') THEN
        CREATE ROLE posflow_notifier NOLOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO posflow_notifier', current_schema());
END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON merchant_preferences, notification_outbox, digest_items, digests
    TO posflow_notifier;
GRANT USAGE ON SEQUENCE notification_outbox_id_seq TO posflow_notifier;
GRANT SELECT ON notifier_schema_migrations TO posflow_notifier;
