-- Where fetching each miner's receipts goes on (validator), so a restart
-- neither fetches them again nor skips any.
CREATE TABLE receipt_cursors (
    miner      TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
