-- posflow-api schema, version 6: an owner may remove a person whose authenticator was just
-- reset (credentials cleared): only an active person must have a password and an
-- authenticator.
ALTER TABLE portal_people DROP CONSTRAINT portal_people_check;
ALTER TABLE portal_people ADD CONSTRAINT portal_people_check
    CHECK (status <> 'active' OR (password_hash IS NOT NULL AND totp_secret IS NOT NULL));
