-- posflow storage schema, version 1.
-- Idempotency: transaction_keys holds each transaction id once (a partitioned table cannot
-- have a unique index without the partition key, so the ledger is its own table). A row lands
-- in transactions only when its key was new, in the same database transaction.

CREATE TABLE transaction_keys (
    transaction_id   text PRIMARY KEY,
    transaction_time timestamptz NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE transactions (
    transaction_id          text        NOT NULL,
    terminal_id             text        NOT NULL,
    merchant_id             text        NOT NULL,
    sequence                bigint      NOT NULL,
    transaction_time        timestamptz NOT NULL,
    type                    text        NOT NULL,
    original_transaction_id text,
    amount_minor            bigint      NOT NULL,
    currency                text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    payment_method          text        NOT NULL,
    entry_mode              text        NOT NULL,
    card_token              text,
    card_bin                text,
    card_last4              text,
    auth_code               text,
    response_code           text        NOT NULL,
    mcc                     text        NOT NULL,
    latitude                double precision,
    longitude               double precision,
    received_at             timestamptz NOT NULL,
    bridge_id               text        NOT NULL,
    validated_at            timestamptz NOT NULL,
    stored_at               timestamptz NOT NULL DEFAULT now(),
    kafka_partition         integer     NOT NULL,
    kafka_offset            bigint      NOT NULL,
    PRIMARY KEY (transaction_id, transaction_time)
) PARTITION BY RANGE (transaction_time);

-- Catches anything outside the monthly partitions storage keeps ahead of time.
CREATE TABLE transactions_default PARTITION OF transactions DEFAULT;

CREATE INDEX transactions_merchant_time ON transactions (merchant_id, transaction_time);
CREATE INDEX transactions_terminal_time ON transactions (terminal_id, transaction_time);
CREATE INDEX transactions_card_time ON transactions (card_token, transaction_time) WHERE card_token IS NOT NULL;
CREATE INDEX transactions_original ON transactions (original_transaction_id) WHERE original_transaction_id IS NOT NULL;

CREATE TABLE transaction_line_items (
    transaction_id   text    NOT NULL REFERENCES transaction_keys (transaction_id),
    line_no          integer NOT NULL,
    sku              text    NOT NULL,
    description      text    NOT NULL,
    unit_price_minor bigint  NOT NULL,
    quantity         integer NOT NULL,
    PRIMARY KEY (transaction_id, line_no)
);

-- The consumed position, written in the same database transaction as the rows it covers.
CREATE TABLE kafka_offsets (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint  NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Creates the monthly partitions of transactions for `months` months from `first_month`.
-- Run by storage at start-up (and safe to run by hand): existing partitions are left alone.
CREATE FUNCTION posflow_ensure_month_partitions(first_month date, months integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m date;
    name text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        m := date_trunc('month', first_month)::date + make_interval(months => i);
        name := format('transactions_%s', to_char(m, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF transactions FOR VALUES FROM (%L) TO (%L)',
                               name, m, (m + interval '1 month')::date);
            EXCEPTION WHEN others THEN
                -- Rows for that month already sit in the default partition (a late start);
                -- they stay there and stay queryable. docs/storage.md says how to move them.
                RAISE NOTICE 'partition % not created: %', name, SQLERRM;
            END;
        END IF;
    END LOOP;
END $$;
