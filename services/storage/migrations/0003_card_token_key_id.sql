-- posflow storage schema, version 3: which card-token key made each card_token (docs/operations.md,
-- rotating the card-token key). NULL without a card; '' for rows written before key ids.
ALTER TABLE transactions ADD COLUMN card_token_key_id text;
UPDATE transactions SET card_token_key_id = '' WHERE card_token IS NOT NULL;
