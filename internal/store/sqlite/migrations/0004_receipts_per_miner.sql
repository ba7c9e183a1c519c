-- A job retried on another miner has receipts with each: key them by miner too.
CREATE TABLE receipts_by_miner (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    job_uuid            TEXT NOT NULL,
    miner_hotkey        TEXT NOT NULL DEFAULT '',
    receipt_type        TEXT NOT NULL,
    payload             TEXT NOT NULL,
    validator_signature TEXT NOT NULL,
    miner_signature     TEXT NOT NULL DEFAULT '',
    stored_at           INTEGER NOT NULL,
    UNIQUE(job_uuid, miner_hotkey, receipt_type)
);
INSERT INTO receipts_by_miner (id, job_uuid, miner_hotkey, receipt_type, payload, validator_signature, miner_signature, stored_at)
    SELECT id, job_uuid, COALESCE(json_extract(payload, '$.miner_hotkey'), ''), receipt_type, payload, validator_signature, miner_signature, stored_at
    FROM receipts;
DROP TABLE receipts;
ALTER TABLE receipts_by_miner RENAME TO receipts;
CREATE INDEX receipts_stored ON receipts(stored_at);
