-- posflow-api schema, version 5: the people who sign in to the merchant portal (issue 19,
-- docs/portal.md). A person has one of the API's roles over one merchant or a chain's set,
-- a password (argon2id) and a TOTP authenticator; nothing here is card data, and none of these
-- tables is merchant data under row-level security: the API reads a person before it knows
-- which merchant a request is for, and only the API's role reads them at all.
CREATE TABLE portal_people (
    id              text PRIMARY KEY,                 -- 'u_' + 16 hex
    email           text NOT NULL UNIQUE CHECK (email = lower(email)),
    role            text NOT NULL CHECK (role IN ('owner', 'finance', 'developer', 'auditor')),
    merchants       text[] NOT NULL CHECK (cardinality(merchants) > 0),
    -- invited: has not finished enrolling; active: may sign in; removed: may not, kept for the
    -- audit trail's sake.
    status          text NOT NULL DEFAULT 'invited' CHECK (status IN ('invited', 'active', 'removed')),
    password_hash   text,                             -- argon2id PHC string
    totp_secret     text,                             -- sealed (--secrets-keys), base32 inside
    totp_last_step  bigint,                           -- a code is good once
    failed_attempts integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL,
    CHECK (status = 'invited' OR (password_hash IS NOT NULL AND totp_secret IS NOT NULL))
);
CREATE INDEX portal_people_merchants ON portal_people USING gin (merchants);

-- The link in an invitation email: its token's SHA-256 (the token is 256 random bits), good
-- until it expires or enrolment finishes with it.
CREATE TABLE portal_invitations (
    token_hash bytea PRIMARY KEY,
    person_id  text NOT NULL REFERENCES portal_people (id),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

-- One-time recovery codes, shown once at enrolment; their SHA-256 (50 random bits each).
CREATE TABLE portal_recovery_codes (
    person_id text NOT NULL REFERENCES portal_people (id),
    code_hash bytea NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (person_id, code_hash)
);

-- Server-side sessions: the SHA-256 of the cookie's id, never the id.
CREATE TABLE portal_sessions (
    id_hash      bytea PRIMARY KEY,
    person_id    text NOT NULL REFERENCES portal_people (id),
    source       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz
);
CREATE INDEX portal_sessions_person ON portal_sessions (person_id) WHERE ended_at IS NULL;

GRANT SELECT, INSERT, UPDATE ON portal_people, portal_invitations, portal_recovery_codes,
    portal_sessions TO posflow_api;
