-- posflow storage schema, version 5: offline capture (payload version 2, docs/terminal-contract.md).
-- `offline`: the terminal captured the sale without a link to posflow and sent it later;
-- `offline_since`: when its link went down, if it knows. Rows from before are online.
ALTER TABLE transactions ADD COLUMN offline boolean NOT NULL DEFAULT false;
ALTER TABLE transactions ADD COLUMN offline_since timestamptz;
