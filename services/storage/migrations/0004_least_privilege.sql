-- posflow storage schema, version 4: least privilege (docs/storage.md). Storage runs as a login
-- that is a member of posflow_storage: it may read and write its own tables and nothing else —
-- not the notifier's (webhook secrets), not the schema. The role migrating owns everything.
-- Creating the group role needs CREATEROLE; an operator may create it beforehand instead.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'posflow_storage') THEN
        CREATE ROLE posflow_storage NOLOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO posflow_storage', current_schema());
    -- Monthly partitions are created at start-up by a role that does not own `transactions`:
    -- the function runs with its owner's rights, in this schema only.
    EXECUTE format('ALTER FUNCTION posflow_ensure_month_partitions(date, integer) SECURITY DEFINER SET search_path = %I',
                   current_schema());
END $$;
REVOKE ALL ON FUNCTION posflow_ensure_month_partitions(date, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION posflow_ensure_month_partitions(date, integer) TO posflow_storage;
GRANT SELECT, INSERT ON transaction_keys, transactions, transaction_line_items, rejections TO posflow_storage;
GRANT SELECT, INSERT, UPDATE ON kafka_offsets TO posflow_storage;
GRANT SELECT ON schema_migrations TO posflow_storage;
