-- posflow storage schema, version 2: rejected transactions, kept for merchants' support and
-- analysts' rejection reports. One row per transaction id (a terminal's resend of a rejected
-- transaction is rejected again, and stored once). Card data as in transactions: token, BIN and
-- last four only.

CREATE TABLE rejections (
    transaction_id   text        PRIMARY KEY,
    terminal_id      text        NOT NULL,
    merchant_id      text        NOT NULL,
    transaction_time timestamptz NOT NULL,
    type             text        NOT NULL,
    amount_minor     bigint      NOT NULL,
    currency         text        NOT NULL,
    card_token       text,
    reason_codes     text[]      NOT NULL,
    reasons          jsonb       NOT NULL,
    received_at      timestamptz NOT NULL,
    rejected_at      timestamptz NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now(),
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL
);

CREATE INDEX rejections_merchant_time ON rejections (merchant_id, rejected_at);
CREATE INDEX rejections_terminal_time ON rejections (terminal_id, rejected_at);
CREATE INDEX rejections_reason_codes ON rejections USING gin (reason_codes);
